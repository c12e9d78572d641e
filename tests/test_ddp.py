"""Data-parallel training on real gloo ranks (SPEC §8): every implementation equals one process
with the same global batch and per-sample noise; sharded optimizer state is complete and
portable; ranks draw their own noise and data; a run resumes identically; a dead rank ends the run.

The 2-rank runs are started once per module (they dominate the cost) and each test checks one
behaviour of what they recorded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ddp_workers import (
    SCENARIOS,
    WORLD_SIZE,
    all_workers,
    run_ranks,
    train_tiny,
)
from diffusionlm.errors import InputError
from diffusionlm.training.trainer import build_trainer
from diffusionlm.utils.checkpoint import load_checkpoint
from test_train_fixtures import REPO_ROOT, tiny_config, tiny_config_dict, write_tiny_toml

pytestmark = pytest.mark.slow  # multi-process

WALL_S = 600  # generous: a hang fails the test, a loaded machine should not


@pytest.fixture(scope="module")
def two_rank_runs(tmp_path_factory, loopback) -> tuple[Path, Path, dict]:
    """One spawn of 2 gloo ranks does all the recording (starting processes is the cost)."""
    out, runs = tmp_path_factory.mktemp("ddp_equivalence"), tmp_path_factory.mktemp("ddp_runs")
    config = tiny_config_dict(runs, training={"max_train_iteration": 4, "grad_accum_steps": 2, "ckpting_save_iter": 2,
                                              "val_freq_iteration": 4},
                              logging={"run_name": "ddp"}, optimizer={"optimizer_name": "muon"},
                              ddp={"timeout_s": 60})
    run_ranks(all_workers, (str(out), str(runs), config), wall_s=WALL_S)
    return out, runs, config


@pytest.fixture(scope="module")
def equivalence(two_rank_runs) -> Path:
    return two_rank_runs[0]


@pytest.fixture(scope="module")
def trained(two_rank_runs) -> tuple[Path, dict]:
    return two_rank_runs[1], two_rank_runs[2]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_two_ranks_match_one_process_with_the_same_global_batch_and_noise(equivalence, name):
    scenario = SCENARIOS[name]
    saved = torch.load(equivalence / f"{name}.pt", weights_only=True)
    reference, reference_losses = train_tiny(scenario, rank=0, world_size=WORLD_SIZE, distributed=False)
    for key, value in reference.full_model_state().items():
        torch.testing.assert_close(saved["params"][key], value, atol=1e-6, rtol=0, msg=f"{name}: {key}")
    # the loss the loop logs is the mean over ranks, i.e. the global batch's loss
    assert saved["losses"] == pytest.approx(reference_losses, abs=1e-6)


@pytest.mark.parametrize("name", ["custom_sharded_adamw", "custom_sharded_muon"])
def test_sharded_optimizer_checkpoint_holds_every_ranks_state_and_loads_unsharded(equivalence, name):
    saved = torch.load(equivalence / f"{name}.pt", weights_only=True)["optimizer"]
    reference, _ = train_tiny(SCENARIOS[name], rank=0, world_size=WORLD_SIZE, distributed=False)
    expected = reference.optimizer.state_dict()
    assert sorted(saved["state"]) == sorted(expected["state"])
    for index, state in expected["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(torch.as_tensor(saved["state"][index][key]), torch.as_tensor(value),
                                       atol=1e-6, rtol=0)
    reference.optimizer.load_state_dict(saved)  # a 2-rank state resumes in a single process


def test_unused_parameters_do_not_hang_and_frozen_ones_get_no_gradient(equivalence):
    saved = torch.load(equivalence / "unused.pt", weights_only=True)
    assert saved["frozen_grad_is_none"]
    assert saved["used"].abs().sum() > 0
    # only rank 1 used it; the average over 2 ranks is half its gradient, input 2 -> 2 * 2 / 2
    torch.testing.assert_close(saved["unused"], torch.full((4, 4), 2.0))
    assert not any(key.startswith("module.") for key in saved["state_keys"])


def test_metrics_are_averaged_over_ranks(equivalence):
    assert torch.load(equivalence / "metrics.pt", weights_only=True) == {"metrics.loss": 0.5, "note": "kept"}


def test_ranks_draw_different_noise_and_read_disjoint_data(trained):
    runs, _ = trained
    rank0, rank1 = torch.load(runs / "streams.pt", weights_only=True)
    assert not torch.equal(rank0["noise"], rank1["noise"])
    rows0 = {tuple(row.tolist()) for row in rank0["batch"]}
    assert rows0.isdisjoint(tuple(row.tolist()) for row in rank1["batch"])


def test_checkpoint_holds_every_ranks_loader_and_rng_state(trained):
    runs, _ = trained
    checkpoint = load_checkpoint(sorted((runs / "ddp" / "checkpoints").iterdir())[-1])
    assert sorted(checkpoint["data"]) == [0, 1] and sorted(checkpoint["rng"]) == [0, 1]
    assert checkpoint["data"][1]["rank"] == 1
    assert not torch.equal(checkpoint["rng"][0]["noise"], checkpoint["rng"][1]["noise"])
    assert len(checkpoint["optimizer"][0]["state"]) == len(checkpoint["model"])  # all ranks' shares


@pytest.mark.parametrize(("name", "steps"), [("ddp", 4), ("torch", 2), ("fsdp2", 2)])
def test_resumed_two_rank_run_continues_identically(trained, name, steps):
    runs, _ = trained
    uninterrupted = load_checkpoint(sorted((runs / name / "checkpoints").iterdir())[-1])
    resumed = load_checkpoint(sorted((runs / f"{name}_resumed" / "checkpoints").iterdir())[-1])
    assert resumed["step"] == uninterrupted["step"] == steps
    for key, value in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, state in uninterrupted["optimizer"][0]["state"].items():  # fsdp2 keys them by name
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(resumed["optimizer"][0]["state"][index][key]), torch.as_tensor(value))


def test_resuming_a_two_rank_checkpoint_on_one_rank_fails_clearly(trained):
    runs, config = trained
    last = sorted((runs / "ddp" / "checkpoints").iterdir())[-1]
    with pytest.raises(InputError, match=r"2 rank\(s\), this run has 1"):
        build_trainer(tiny_config(runs, training=config["training"], optimizer=config["optimizer"],
                                  logging={"run_name": "ddp"}), resume=str(last))


def test_train_ddp_dry_run_validates_the_shipped_config(capsys):
    from cli.train_ddp import main

    assert main(["--dry-run"]) == 0
    assert "config OK" in capsys.readouterr().out


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the launcher's workers through /proc")
def test_a_killed_rank_makes_the_launcher_and_the_other_rank_exit_nonzero(tmp_path, loopback):
    timeout_s = 20
    config = write_tiny_toml(tmp_path / "train.toml", tmp_path / "runs",
                             training={"max_train_iteration": 100000, "skip_validation": True,
                                       "ckpting_save_iter": 100000},
                             logging={"log_every": 1}, ddp={"nproc_per_node": 2, "timeout_s": timeout_s})
    launcher = subprocess.Popen([sys.executable, "-m", "cli.train_ddp", "--config", str(config)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    watchdog = threading.Timer(WALL_S, launcher.kill)  # the wall limit, even if nothing is ever logged
    watchdog.start()
    try:
        first_line = launcher.stdout.readline()  # rank 0 logs once both ranks are training
        assert first_line, "the run ended before logging"
        workers = _children(launcher.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        start = time.monotonic()
        code = launcher.wait(timeout=timeout_s + 60)
        assert code != 0
        assert time.monotonic() - start < timeout_s + 30
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)  # none left behind
    finally:
        watchdog.cancel()
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
