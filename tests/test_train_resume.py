"""A run killed with SIGKILL and resumed with `--resume latest` ends bit-identical to an uninterrupted one,
and leaves no temp file of an interrupted save behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train_fixtures import REPO_ROOT, write_tiny_toml

from diffusionlm.utils.checkpoint import load_checkpoint
from diffusionlm.utils.run_layout import list_checkpoints

TRAINING = {"max_train_iteration": 120, "ckpting_save_iter": 5, "val_freq_iteration": 20}


@pytest.fixture
def train():
    """Starts `diffusionlm-train` processes, each in its own process group; whatever still runs
    when the test ends (a failed assertion, a timeout) is killed with its group."""
    started: list[subprocess.Popen] = []

    def start(config: Path, *extra: str) -> subprocess.Popen:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen([sys.executable, "-m", "cli.train", "--config", str(config), *extra],
                                   cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def _finish(process: subprocess.Popen) -> list[dict]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _losses(lines: list[dict]) -> dict[int, float]:
    return {line["step"]: line["metrics.loss"] for line in lines if "metrics.loss" in line}


def _val_losses(lines: list[dict]) -> dict[int, float]:
    return {line["step"]: line["metrics.val_loss"] for line in lines if "metrics.val_loss" in line}


@pytest.mark.slow
def test_sigkilled_run_resumed_from_latest_is_bit_identical_to_an_uninterrupted_run(tmp_path, train):
    straight = write_tiny_toml(tmp_path / "straight.toml", tmp_path / "straight", training=TRAINING)
    killed = write_tiny_toml(tmp_path / "killed.toml", tmp_path / "killed", training=TRAINING)
    reference = train(straight)

    victim = train(killed)
    checkpoints = tmp_path / "killed" / "tiny" / "checkpoints"
    # Kill as soon as a checkpoint at or past a random early step exists: the run is then
    # somewhere between two checkpoints, far from its end, whatever the machine's speed.
    kill_after = random.Random(os.getpid()).randrange(10, 40)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and victim.poll() is None:
        saved = list_checkpoints(checkpoints.parent)
        if saved and int(saved[-1].stem.split("_")[-1]) >= kill_after:
            break
        time.sleep(0.005)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at = load_checkpoint(list_checkpoints(checkpoints.parent)[-1])["step"]
    assert killed_at < TRAINING["max_train_iteration"]
    # What a kill in the middle of a save leaves: the temp file the save was writing.
    unfinished = checkpoints / f".step_{killed_at + 5:08d}.pt.k1ll3d.tmp"
    unfinished.write_bytes(b"\0" * 4096)

    resumed_lines = _finish(train(killed, "--resume", "latest"))
    assert not unfinished.exists() and not list(checkpoints.glob(".*.tmp"))
    reference_lines = _finish(reference)

    final_reference = load_checkpoint(list_checkpoints(tmp_path / "straight" / "tiny")[-1])
    final_resumed = load_checkpoint(list_checkpoints(checkpoints.parent)[-1])
    assert final_resumed["step"] == final_reference["step"] == TRAINING["max_train_iteration"]
    for name, tensor in final_reference["model"].items():
        assert torch.equal(final_resumed["model"][name], tensor), name
    reference_state = final_reference["optimizer"][0]["state"]
    for index, state in final_resumed["optimizer"][0]["state"].items():
        assert torch.equal(state["exp_avg_sq"], reference_state[index]["exp_avg_sq"])

    resumed_losses, reference_losses = _losses(resumed_lines), _losses(reference_lines)
    assert resumed_losses and min(resumed_losses) > killed_at
    assert resumed_losses == {step: reference_losses[step] for step in resumed_losses}
    resumed_val = _val_losses(resumed_lines)
    assert resumed_val == {step: _val_losses(reference_lines)[step] for step in resumed_val}
