"""Logger backends: console JSON lines, rank-zero silence, and a real offline W&B run."""

from __future__ import annotations

import io
import json

import pytest

from config.schemas import LoggingConfig, WandbConfig
from logger import build_logger
from logger.console_logger import ConsoleLogger


def test_console_logger_writes_one_json_object_per_line():
    stream = io.StringIO()
    log = ConsoleLogger(stream)
    log.log({"metrics.loss": 2.5, "metrics.lr/hidden": 1e-3}, step=7)
    log.log({"metrics.loss": float("nan")}, step=8)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines[0] == {"step": 7, "metrics.loss": 2.5, "metrics.lr/hidden": 1e-3}
    assert lines[1] == {"step": 8, "metrics.loss": "nan"}


def test_non_zero_rank_logs_nothing(capsys, tmp_path):
    log = build_logger(LoggingConfig(backend="console"), WandbConfig(), run_dir=tmp_path, config={}, rank=1)
    log.log({"metrics.loss": 1.0}, step=1)
    log.finish()
    assert capsys.readouterr().out == ""


def test_rank_zero_console_logs(capsys, tmp_path):
    log = build_logger(LoggingConfig(backend="console"), WandbConfig(), run_dir=tmp_path, config={}, rank=0)
    log.log({"metrics.loss": 1.0}, step=1)
    assert json.loads(capsys.readouterr().out) == {"step": 1, "metrics.loss": 1.0}


@pytest.mark.slow
def test_wandb_offline_run_holds_logged_keys(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    artifact = tmp_path / "vocab.json"
    artifact.write_text("{}")
    log = build_logger(LoggingConfig(backend="wandb", run_name="offline-test"), WandbConfig(project="tests"),
                       run_dir=tmp_path / "run", config={"model": {"d_model": 8}}, rank=0)
    for step in range(3):
        log.log({"metrics.loss": 3.0 - step, "metrics.lr": 1e-3}, step=step)
    log.log_artifact(artifact, name="tokenizer", type="tokenizer")
    log.finish()
    # finish() only tells W&B's service process that the run is over; that process closes (and
    # so flushes) the transaction log on its own time, so right after finish() the file may hold
    # just its 7-byte header. teardown() waits for the service process to exit.
    wandb.teardown()
    run_dirs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 1
    (records,) = run_dirs[0].glob("*.wandb")  # the offline transaction log `wandb sync` uploads
    data = records.read_bytes()
    assert b"metrics.loss" in data and b"metrics.lr" in data and b"tokenizer" in data
