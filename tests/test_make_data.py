"""diffusionlm-make-data: ids equal to direct tokenization, all-or-nothing output, bad input,
and training read back from both outputs (memmap windows and pre-tokenized parquet)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import tomli_w
import torch
from test_train_fixtures import REPO_ROOT, tiny_config, write_tiny_toml

from cli.make_data import main as make_data_main
from cli.train import main as train_main
from diffusionlm.data.corpus import write_corpus_text
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.training.trainer import build_trainer, run_training
from diffusionlm.utils.checkpoint import load_checkpoint
from diffusionlm.utils.run_layout import list_checkpoints

SEPARATOR = "<|endoftext|>"


def make_data_toml(path: Path, data: dict, output: dict) -> Path:
    path.write_text(tomli_w.dumps({"data": {"num_workers": 0, **data}, "output": {"progress": False, **output}}))
    return path


def text_source(train: Path, validation: Path, **extra) -> dict:
    return {"dataset_name": "text", "data_files": {"train": str(train), "validation": str(validation)},
            "document_separator": SEPARATOR, **extra}


def documents_of(path: Path) -> list[str]:
    return [doc.strip("\n") for doc in path.read_text(encoding="utf-8").split(SEPARATOR) if doc.strip()]


@pytest.fixture(scope="module")
def story_data(tmp_path_factory) -> Path:
    """Built-in-corpus stories as text files, made into memmap + parquet with the built-in tokenizer."""
    folder = tmp_path_factory.mktemp("stories")
    write_corpus_text(folder / "train.txt", seed=0, num_stories=600)
    write_corpus_text(folder / "valid.txt", seed=99, num_stories=60)
    config = make_data_toml(folder / "make.toml", text_source(folder / "train.txt", folder / "valid.txt"),
                            {"output_dir": str(folder / "out"), "rows_per_shard": 128})
    assert make_data_main(["--config", str(config)]) == 0
    return folder


def test_memmap_and_parquet_hold_the_ids_of_direct_tokenization_with_separators(tmp_path, shared_data, capsys):
    story_file = tmp_path / "stories.txt"
    story_file.write_text("".join(f"{doc}\n{SEPARATOR}\n" for doc in documents_of(shared_data / "tinystories_valid.txt")[:60]))
    tokenizer = load_tokenizer(shared_data / "gpt2_vocab.json", shared_data / "gpt2_merges.txt")
    tok = {"vocab_path": str(shared_data / "gpt2_vocab.json"), "merges_path": str(shared_data / "gpt2_merges.txt")}
    config = make_data_toml(tmp_path / "make.toml", text_source(story_file, story_file, num_workers=2, tokenizer=tok),
                            {"output_dir": str(tmp_path / "out"), "rows_per_shard": 25, "include_text": True})
    assert make_data_main(["--config", str(config)]) == 0
    assert "tokens/s" in capsys.readouterr().out

    eot = tokenizer.token_id(SEPARATOR)
    expected_rows = [tokenizer.encode(doc) + [eot] for doc in documents_of(story_file)]
    out = tmp_path / "out"
    sidecar = json.loads((out / "train.dat.json").read_text())
    assert sidecar["dtype"] == "uint16" and sidecar["num_documents"] == 60
    memmap = np.fromfile(out / "train.dat", dtype="<u2")
    assert memmap.tolist() == [token for row in expected_rows for token in row]
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "parquet"))
    assert loaded["train"]["input_ids"] == expected_rows
    assert loaded["validation"]["text"] == documents_of(story_file)
    assert sorted(p.name for p in (out / "parquet").glob("train-*")) == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert "split: validation" in (out / "parquet" / "README.md").read_text()


def _train_config(tmp_path: Path, data: dict, **training):
    return tiny_config(tmp_path / "runs", data={"shuffle_buffer_size": 16, **data},
                       optimizer={"max_learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_iters": 2,
                                  "cosine_cycle_iters": 60},
                       training={"max_train_iteration": 40, "val_freq_iteration": 40, "ckpting_save_iter": 20,
                                 "max_val_iteration": 2, **training})


def memmap_source(folder: Path) -> dict:
    return {"dataset_name": "memmap",
            "data_files": {"train": str(folder / "out" / "train.dat"), "validation": str(folder / "out" / "validation.dat")}}


def parquet_source(folder: Path) -> dict:
    parquet = folder / "out" / "parquet"
    return {"dataset_name": "parquet", "token_field": "input_ids",
            "data_files": {"train": str(parquet / "train-*.parquet"), "validation": str(parquet / "validation-*.parquet")}}


@pytest.mark.parametrize("source", [memmap_source, parquet_source])
def test_training_from_made_data_learns(tmp_path, story_data, source):
    trainer = build_trainer(_train_config(tmp_path, source(story_data)))
    initial = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    run_training(trainer)
    final = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    assert final < initial - 1.0, (initial, final)


@pytest.mark.parametrize("source", [memmap_source, parquet_source])
def test_training_from_made_data_resumes_exactly(tmp_path, story_data, source):
    training = {"max_train_iteration": 12, "ckpting_save_iter": 4, "skip_validation": True}
    straight = run_training(build_trainer(_train_config(tmp_path / "a", source(story_data), **training)))
    first = _train_config(tmp_path / "b", source(story_data), **(training | {"max_train_iteration": 8}))
    run_training(build_trainer(first))
    resumed = run_training(build_trainer(first.model_copy(update={"training": first.training.model_copy(
        update={"max_train_iteration": 12})}), resume="latest"))
    a = load_checkpoint(straight.final_checkpoint)["model"]
    b = load_checkpoint(resumed.final_checkpoint)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def _train_exit(tmp_path: Path, data: dict, capsys) -> tuple[int, str]:
    config = write_tiny_toml(tmp_path / "t.toml", tmp_path / "runs", data=data, training={"skip_validation": True})
    code = train_main(["--config", str(config)])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(("source", "named_file"), [(memmap_source, "train.dat.json"),
                                                     (parquet_source, "train-00000-of-00005.parquet")])
def test_data_made_with_another_tokenizer_is_refused(tmp_path, story_data, capsys, shared_data, source, named_file):
    data = source(story_data) | {"tokenizer": {"vocab_path": str(shared_data / "gpt2_vocab.json"),
                                               "merges_path": str(shared_data / "gpt2_merges.txt")}}
    config = write_tiny_toml(tmp_path / "t.toml", tmp_path / "runs", data=data, training={"skip_validation": True},
                             model={"vocab_size": 50304, "eot_token_id": 50256, "mask_token_id": 50257})
    assert train_main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{named_file}: tokenized with tokenizer" in err


@pytest.mark.parametrize("change", ["vocab_size", "truncated", "no_sidecar"])
def test_memmap_whose_sidecar_does_not_match_exits_2(tmp_path, story_data, capsys, change):
    out = tmp_path / "copy"
    shutil.copytree(story_data / "out", out)
    sidecar = out / "train.dat.json"
    if change == "vocab_size":
        sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"vocab_size": 5000}))
    elif change == "truncated":
        with open(out / "train.dat", "r+b") as handle:
            handle.truncate(100)
    else:
        sidecar.unlink()
    code, err = _train_exit(tmp_path, {"dataset_name": "memmap", "data_files": {"train": str(out / "train.dat")}}, capsys)
    assert code == 2 and len(err.splitlines()) == 1
    assert {"vocab_size": "5000-token vocabulary", "truncated": "incomplete", "no_sidecar": "missing"}[change] in err


def _make_exit(tmp_path: Path, data: dict, output: dict, capsys) -> tuple[int, str]:
    config = make_data_toml(tmp_path / "make.toml", data, output)
    code = make_data_main(["--config", str(config)])
    return code, capsys.readouterr().err.strip()


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    stories = tmp_path / "s.txt"
    write_corpus_text(stories, seed=0, num_stories=5)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    (tmp_path / "exists").mkdir()
    (tmp_path / "a_file").write_text("x")
    cases = [
        (text_source(stories, stories, tokenizer={"vocab_path": str(tmp_path / "nope.json"),
                                                  "merges_path": str(tmp_path / "nope.txt")}),
         {"output_dir": str(tmp_path / "o1")}, "file not found"),
        (text_source(stories, stories), {"output_dir": str(tmp_path / "a_file" / "out")}, "output.output_dir"),
        (text_source(stories, stories), {"output_dir": str(tmp_path / "exists")}, "already exists"),
        (text_source(empty, stories), {"output_dir": str(tmp_path / "o2")}, "no rows"),
    ]
    for data, output, message in cases:
        code, err = _make_exit(tmp_path, data, output, capsys)
        assert code == 2 and len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o2").exists() and not (tmp_path / ".o2.partial").exists()


def test_val_split_null_writes_the_train_split_only(tmp_path):
    stories = tmp_path / "s.txt"
    write_corpus_text(stories, seed=0, num_stories=20)
    config = make_data_toml(tmp_path / "make.toml", text_source(stories, stories), {"output_dir": str(tmp_path / "out")})
    assert make_data_main(["--config", str(config), "--set", "data.val_split=null"]) == 0
    assert (tmp_path / "out" / "train.dat").is_file()
    assert not list((tmp_path / "out").glob("validation*"))
    assert not list((tmp_path / "out" / "parquet").glob("validation-*"))


def _start_make_data(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "out"
    config = make_data_toml(tmp_path / "make.toml", {"dataset_name": "builtin", "num_workers": 1},
                            {"output_dir": str(out)})
    # SIGINT back to its default in the child: a shell's background job (how CI runners and nohup'd
    # suites often start) inherits SIGINT ignored, and then no KeyboardInterrupt could ever arrive.
    process = subprocess.Popen([sys.executable, "-m", "cli.make_data", "--config", str(config)], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = tmp_path / ".out.partial"
    deadline = time.monotonic() + 120
    while not (partial / "train.dat").exists() or (partial / "train.dat").stat().st_size == 0:
        assert time.monotonic() < deadline and process.poll() is None, "make-data never started writing"
        time.sleep(0.2)
    return process, out


@pytest.mark.slow
def test_interrupted_make_data_leaves_nothing_a_later_run_would_read(tmp_path, capsys):
    process, out = _start_make_data(tmp_path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "interrupted" in err
    assert not out.exists() and not (tmp_path / ".out.partial").exists()

    process, out = _start_make_data(tmp_path)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    assert not out.exists()  # the partial folder stays hidden under its own name
    code, err = _train_exit(tmp_path, {"dataset_name": "memmap", "data_files": {"train": str(out / "train.dat")}},
                            capsys)
    assert code == 2 and "not found" in err
    stories = tmp_path / "s.txt"
    write_corpus_text(stories, seed=0, num_stories=20)
    code, err = _make_exit(tmp_path, text_source(stories, stories), {"output_dir": str(out)}, capsys)
    assert code == 0 and "interrupted run" in err
    assert not (tmp_path / ".out.partial").exists() and list_checkpoints(tmp_path / "runs" / "tiny") == []
    assert json.loads((out / "train.dat.json").read_text())["num_documents"] == 20
