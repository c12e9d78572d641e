"""`diffusionlm-train` / `diffusionlm-bench-train` command lines: config errors, dry run, shipped configs."""

from __future__ import annotations

import json

import pytest
import torch
from test_train_fixtures import builtin_special_ids, write_tiny_toml

from cli.bench_train import main as bench_main
from cli.train import main as train_main
from config.bench_train import BenchTrainConfig
from config.io import load_config, resource_path
from config.train import TrainConfig

def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def tiny_toml(tmp_path):
    return write_tiny_toml(tmp_path / "tiny.toml", tmp_path / "runs")


def test_unknown_key_exits_2_naming_it(tmp_path, tiny_toml, capsys):
    tiny_toml.write_text(tiny_toml.read_text().replace("[training]\n", "[training]\nlearning_rat = 1\n"))
    assert train_main(["--config", str(tiny_toml)]) == 2
    assert "training.learning_rat: unknown key" in _one_line_error(capsys)


def test_wrong_type_exits_2_naming_the_field(tiny_toml, capsys):
    assert train_main(["--config", str(tiny_toml), "--set", "training.batch_size=\"many\""]) == 2
    assert "training.batch_size" in _one_line_error(capsys)


def test_set_of_a_missing_key_exits_2(tiny_toml, capsys):
    assert train_main(["--config", str(tiny_toml), "--set", "training.no_such_key=1"]) == 2
    assert "no_such_key" in _one_line_error(capsys)


def test_mask_id_that_disagrees_with_the_tokenizer_exits_2(tiny_toml, capsys):
    _, eot, _ = builtin_special_ids()
    assert train_main(["--config", str(tiny_toml), "--set", f"model.mask_token_id={eot - 1}"]) == 2
    assert "model.mask_token_id" in _one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when CUDA is absent")
def test_cuda_requested_without_cuda_exits_2(tiny_toml, capsys):
    assert train_main(["--config", str(tiny_toml), "--set", "training.device=cuda"]) == 2
    assert "training.device" in _one_line_error(capsys)


def _runs_path_error(tiny_toml, runs_path, capsys) -> str:
    assert train_main(["--config", str(tiny_toml), "--set", f"checkpoint.runs_path={json.dumps(str(runs_path))}"]) == 2
    return _one_line_error(capsys)


def test_runs_path_that_is_a_file_exits_2_before_any_work(tmp_path, tiny_toml, capsys):
    runs = tmp_path / "runs.txt"
    runs.write_text("not a folder")
    assert _runs_path_error(tiny_toml, runs, capsys).endswith(f"checkpoint.runs_path: {runs} is a file, not a folder")


def test_runs_path_under_a_file_exits_2_before_any_work(tmp_path, tiny_toml, capsys):
    (tmp_path / "file").write_text("")
    err = _runs_path_error(tiny_toml, tmp_path / "file" / "runs", capsys)
    assert f"checkpoint.runs_path: {tmp_path / 'file' / 'runs'} cannot be created: {tmp_path / 'file'} is a file" in err


def test_runs_path_in_a_read_only_folder_exits_2_before_any_work(read_only_dir, tiny_toml, capsys):
    err = _runs_path_error(tiny_toml, read_only_dir / "runs", capsys)
    assert f"checkpoint.runs_path: cannot create {read_only_dir / 'runs'}: {read_only_dir} is not writable" in err
    assert not (read_only_dir / "runs").exists()


def test_dry_run_prints_parameter_count_and_writes_nothing(tmp_path, tiny_toml, capsys):
    assert train_main(["--config", str(tiny_toml), "--dry-run"]) == 0
    assert "parameters" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists()


def test_shipped_quickstart_config_validates_and_dry_runs(capsys):
    assert train_main(["--dry-run"]) == 0
    assert "parameters" in capsys.readouterr().out


def test_shipped_tinystories_config_validates(shared_data):
    config = load_config(TrainConfig, resource_path("train_tinystories.toml"), [
        f"data.tokenizer.vocab_path={shared_data / 'gpt2_vocab.json'}",
        f"data.tokenizer.merges_path={shared_data / 'gpt2_merges.txt'}"])
    assert config.model.mask_token_id == 50257 and config.model.vocab_size == 50304


def test_shipped_bench_config_validates():
    config = load_config(BenchTrainConfig, resource_path("bench_train.toml"))
    assert config.preset == "auto"


def test_bench_with_missing_reference_exits_2_naming_it(tmp_path, capsys):
    missing = tmp_path / "ref_bench.py"
    assert bench_main(["--set", f"reference_path=\"{missing}\""]) == 2
    assert str(missing) in _one_line_error(capsys)


def test_hub_recipe_without_network_exits_2_with_one_line_before_building_the_model(tmp_path, monkeypatch, capsys,
                                                                                    shared_data):
    # An endpoint on a closed local port stands in for "no network", whatever this machine has.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    code = train_main(["--config", str(resource_path("train_tinystories.toml")),
                       "--set", f"data.tokenizer.vocab_path=\"{shared_data / 'gpt2_vocab.json'}\"",
                       "--set", f"data.tokenizer.merges_path=\"{shared_data / 'gpt2_merges.txt'}\"",
                       "--set", "training.device=\"cpu\"", "--set", "data.hub_timeout_s=2",
                       "--set", f"checkpoint.runs_path=\"{tmp_path / 'runs'}\""])
    assert code == 2
    err = _one_line_error(capsys)
    assert "cannot reach the Hugging Face Hub" in err and "HF_DATASETS_OFFLINE=1" in err
    assert not (tmp_path / "runs").exists()
