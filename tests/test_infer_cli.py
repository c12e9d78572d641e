"""`diffusionlm-infer` end to end on a run directory written in the trainer's format."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import sys
import threading

import pytest
import torch

from cli.infer import MASK_PLACEHOLDER, main
from config.schemas import ModelConfig
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.training.export import export_safetensors
from diffusionlm.utils.checkpoint import save_checkpoint
from diffusionlm.utils.run_layout import checkpoint_path

BUILTIN = load_tokenizer()
VOCAB = -(-BUILTIN.vocab_size // 64) * 64  # padded up to a multiple of 64, as training configs do
MASK_ID = BUILTIN.special_tokens["<|mask|>"]
MODEL = dict(vocab_size=VOCAB, context_length=64, d_model=32, num_layers=1, num_heads=2, d_ff=64,
             mask_token_id=MASK_ID, eot_token_id=BUILTIN.special_tokens["<|endoftext|>"])


def write_run(run_dir, model_config: dict = MODEL, state_config: dict = MODEL) -> None:
    """A run directory as the trainer leaves it: checkpoints/step_*.pt (+ export/), no tokenizer/
    folder (so the built-in tokenizer is used). `state_config` builds the saved weights."""
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(**state_config))
    payload = {"format_version": 1, "step": 10, "model": model.state_dict(), "optimizer": {0: {}},
               "scheduler_step": 10, "rng": {}, "data": {}, "config": {"model": model_config}, "metrics": {}}
    save_checkpoint(checkpoint_path(run_dir, 10), payload)
    export_safetensors(model, ModelConfig(**state_config), run_dir / "export")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("run")
    write_run(path)
    return path


def infer(run_dir, *args: str) -> list[str]:
    return ["--checkpoint", str(run_dir), "--set", "inference.total_length=40", "--set", "inference.steps=16",
            "--set", "inference.block_length=8", "--set", "inference.device=cpu", *args]


def test_prints_the_text_and_one_json_line(run_dir, capsys):
    assert main(infer(run_dir, "--prompt", "Once upon a time")) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["text.prompt"] == "Once upon a time"
    assert "\n".join(lines[:-1]) == "Once upon a time" + record["text.output"]
    assert record["params.steps"] == 16 and record["params.block_length"] == 8
    assert record["metrics.nfe"] <= 16
    assert record["metrics.latency_ms"] > 0 and record["metrics.tokens_per_s"] > 0


def test_loads_an_export_directory(run_dir, capsys):
    assert main(infer(run_dir / "export", "--set", "inference.stop_at_eos=false", "--set", "inference.num_threads=1")) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["params.weights"].endswith("model.safetensors")
    assert record["params.num_threads"] == 1 == torch.get_num_threads()  # applied and reported


def test_export_and_checkpoint_give_the_same_text(run_dir, capsys):
    outputs = []
    for source in (run_dir, run_dir / "export"):
        assert main(infer(source, "--set", "inference.kv_cache=dual", "--set", "inference.threshold=0.5")) == 0
        outputs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["text.output"])
    assert outputs[0] == outputs[1]


def test_stream_off_a_terminal_prints_no_control_codes(run_dir, capsys):
    assert main(infer(run_dir, "--stream")) == 0
    assert "\x1b" not in capsys.readouterr().out


def run_on_a_terminal(argv: list[str], monkeypatch) -> tuple[int, str]:
    """Run the CLI with stdout on a real pseudo-terminal; returns its exit code and everything
    the terminal received. A thread drains the terminal so a long stream cannot fill it."""
    master, slave = pty.openpty()
    terminal = os.fdopen(slave, "w", encoding="utf-8")
    received = bytearray()

    def drain() -> None:
        with contextlib.suppress(OSError):  # EIO once the slave side is closed
            while chunk := os.read(master, 65536):
                received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    monkeypatch.setattr(sys, "stdout", terminal)
    try:
        code = main(argv)
    finally:
        monkeypatch.undo()
        terminal.close()
        reader.join(timeout=30)
        os.close(master)
    assert not reader.is_alive()
    return code, received.decode("utf-8").replace("\r\n", "\n")


def test_stream_on_a_terminal_redraws_the_canvas_after_every_step(run_dir, monkeypatch):
    code, shown = run_on_a_terminal(infer(run_dir, "--stream", "--prompt", "Once"), monkeypatch)
    assert code == 0
    record = json.loads(shown.strip().splitlines()[-1])
    assert shown.startswith("Once\x1b[s")  # the prompt, then the cursor is saved where the canvas starts
    redraws = shown.split("\x1b[u\x1b[J")  # restore the cursor, clear to the end: one per step, one at the end
    assert len(redraws) == record["metrics.nfe"] + 2
    assert redraws[1].count(MASK_PLACEHOLDER) >= 16  # after the first of 16 steps nearly all ~38 are masks
    assert "\x1b" not in redraws[-1]  # the final text is printed plainly after the canvas is cleared
    assert redraws[-1].startswith(record["text.output"])


def expect_input_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


def test_prompt_too_long(run_dir, capsys):
    expect_input_error(capsys, infer(run_dir, "--prompt", "Once upon a time " * 20),
                       "inference.prompt", "total_length")


def test_total_length_beyond_context(run_dir, capsys):
    expect_input_error(capsys, infer(run_dir, "--set", "inference.total_length=65"),
                       "total_length (65)", "context_length (64)")


def test_steps_fewer_than_blocks(run_dir, capsys):
    expect_input_error(capsys, infer(run_dir, "--set", "inference.steps=2"), "inference.steps", "blocks")


@pytest.mark.parametrize("value", ["0", "-8"])
def test_block_length_not_positive(run_dir, capsys, value):
    expect_input_error(capsys, infer(run_dir, "--set", f"inference.block_length={value}"), "inference.block_length")


def test_unknown_remasking(run_dir, capsys):
    expect_input_error(capsys, infer(run_dir, "--set", "inference.remasking=top_k"), "inference.remasking")


def test_mask_id_equal_to_a_normal_token(run_dir, capsys):
    expect_input_error(capsys, infer(run_dir, "--set", "inference.mask_id=300"),
                       "inference.mask_id (300) is a normal token", f"mask token is {MASK_ID}")


def test_checkpoint_config_mismatch_names_the_parameter(tmp_path, capsys):
    write_run(tmp_path, model_config=MODEL, state_config=MODEL | dict(d_model=64, num_heads=4))
    expect_input_error(capsys, infer(tmp_path), "embedding.weight", f"({VOCAB}, 64)", f"({VOCAB}, 32)")


def test_missing_checkpoint_says_to_train_first(tmp_path, capsys):
    expect_input_error(capsys, infer(tmp_path / "nowhere"), "does not exist", "uv run diffusionlm-train")


def test_run_directory_without_checkpoints(tmp_path, capsys):
    expect_input_error(capsys, infer(tmp_path), "no checkpoints", "uv run diffusionlm-train")


def test_corrupt_checkpoint(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000010.pt").write_bytes(b"not a checkpoint")
    expect_input_error(capsys, infer(tmp_path), "step_00000010.pt", "corrupt")


def test_default_config_points_at_the_quickstart_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no runs/ here
    expect_input_error(capsys, ["--set", "inference.device=cpu"], "runs/quickstart", "uv run diffusionlm-train")
