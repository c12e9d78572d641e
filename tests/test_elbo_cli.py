"""`diffusionlm-eval` end to end on a run directory written in the trainer's format."""

from __future__ import annotations

import json

import pytest
import torch
from test_infer_cli import BUILTIN, run_dir, write_run  # noqa: F401 - the shared module-scoped fixture

from cli.eval import main
from diffusionlm.utils.checkpoint import save_checkpoint
from diffusionlm.utils.run_layout import list_checkpoints


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "story.txt"
    path.write_text("Once upon a time a small dog found a red ball.\n<|endoftext|>\n" * 20, encoding="utf-8")
    return path


def evaluate(run_dir, text_file, *args: str) -> list[str]:
    return ["--set", f"eval.checkpoint={json.dumps(str(run_dir))}", "--set", f"eval.text_file={json.dumps(str(text_file))}",
            "--set", "eval.sequence_length=16", "--set", "eval.max_sequences=3", "--set", "eval.device=cpu", *args]


@pytest.mark.parametrize("method", ["elbo", "conditional"])
def test_reports_a_perplexity_bound_and_bits_per_byte(run_dir, text_file, capsys, method):
    assert main(evaluate(run_dir, text_file, "--set", f"eval.method={method}", "--set", "eval.prompt_tokens=4")) == 0
    human, line = capsys.readouterr().out.strip().splitlines()
    record = json.loads(line)
    assert "<= PPL" in human and record["metrics.label"] == "<= PPL"
    assert record["metrics.num_sequences"] == 3
    assert record["metrics.num_tokens"] == 3 * (16 if method == "elbo" else 12)
    assert record["metrics.perplexity_se"] > 0 and record["metrics.bits_per_byte"] > 0
    assert record["metrics.nll_per_token_se"] > 0 and record["metrics.nll_per_token_mc_se"] > 0
    assert f"scored 3 sequences: {record['metrics.num_tokens']} tokens" in human


def test_reports_the_text_it_covers_with_special_tokens_counting_no_bytes(run_dir, text_file, capsys):
    assert main(evaluate(run_dir, text_file, "--set", "eval.method=elbo")) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    scored = BUILTIN.decode(BUILTIN.encode(text_file.read_text(encoding="utf-8"))[:48])  # 3 sequences of 16 tokens
    ends = scored.count("<|endoftext|>")
    assert ends >= 2 and record["metrics.num_documents"] == ends
    assert record["metrics.num_bytes"] == len(scored.encode("utf-8")) - ends * len("<|endoftext|>")


def test_exact_method_needs_a_causal_model(run_dir, text_file, capsys):
    assert main(evaluate(run_dir, text_file, "--set", "eval.method=exact")) == 2
    assert "does not apply to this masked-diffusion model" in capsys.readouterr().err


def test_sequence_longer_than_context_is_rejected(run_dir, text_file, capsys):
    assert main(evaluate(run_dir, text_file, "--set", "eval.sequence_length=65")) == 2
    assert "exceeds the model's context_length (64)" in capsys.readouterr().err


def test_text_file_naming_a_directory_says_so(run_dir, tmp_path, capsys):
    assert main(evaluate(run_dir, tmp_path)) == 2
    err = capsys.readouterr().err
    assert "eval" in err and f"text_file: {tmp_path} is a directory, not a text file" in err


def test_text_shorter_than_one_sequence_is_rejected(run_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("Hi.", encoding="utf-8")
    assert main(evaluate(run_dir, short)) == 2
    assert "fewer than one sequence" in capsys.readouterr().err


def test_elbo_uses_the_runs_own_noise_epsilon_unless_told_otherwise(tmp_path, text_file, capsys):
    write_run(tmp_path)
    path = list_checkpoints(tmp_path)[-1]
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["training"] = {"noise_epsilon": 0.25}
    save_checkpoint(path, checkpoint)

    def scored_with(*args: str) -> float:
        assert main(evaluate(tmp_path, text_file, "--set", "eval.method=elbo", *args)) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])["params.noise_epsilon"]

    assert scored_with() == 0.25
    assert scored_with("--set", "eval.noise_epsilon=0.01") == 0.01
