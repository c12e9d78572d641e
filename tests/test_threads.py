"""The one rule for torch's CPU thread count: the setting, else OMP_NUM_THREADS, else the cores."""

from __future__ import annotations

import json
import os

import pytest
import torch

from config.schemas import InferenceConfig, TrainingConfig
from diffusionlm.errors import InputError
from ddp.launch import worker_env
from diffusionlm.utils.threads import apply_num_threads, default_num_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def test_omp_num_threads_is_honoured(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")  # OpenMP's nested form: the outer level counts
    assert default_num_threads() == 2


def test_without_the_variable_every_usable_core(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_num_threads() == expected


@pytest.mark.parametrize("value", ["0", "many", "-1"])
def test_a_bad_variable_is_an_input_error(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    with pytest.raises(InputError, match="OMP_NUM_THREADS"):
        default_num_threads()


def test_the_setting_wins_and_is_applied(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert apply_num_threads(1) == 1 and torch.get_num_threads() == 1
    assert apply_num_threads(None) == 2 and torch.get_num_threads() == 2


def test_sections_default_to_the_rule_and_reject_zero():
    assert TrainingConfig(batch_size=1, max_train_iteration=1).num_threads is None
    assert InferenceConfig().num_threads is None
    with pytest.raises(ValueError):
        InferenceConfig(num_threads=0)


def test_training_applies_and_logs_its_thread_count(tmp_path, capsys):
    from test_train_fixtures import tiny_config

    from diffusionlm.training.trainer import build_trainer, run_training

    config = tiny_config(tmp_path, training={"num_threads": 1, "max_train_iteration": 2, "val_freq_iteration": 2,
                                             "ckpting_save_iter": 2, "skip_validation": True})
    torch.set_num_threads(2)
    run_training(build_trainer(config))
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["params.num_threads"] for r in records if "params.num_threads" in r] == [1]
    assert torch.get_num_threads() == 1


def test_local_launcher_gives_each_rank_its_share_of_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [worker_env(rank, 3, 29500)["OMP_NUM_THREADS"] for rank in range(3)] == ["2", "2", "2"]
    assert worker_env(0, 16, 29500)["OMP_NUM_THREADS"] == "1"  # never below one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert worker_env(1, 2, 29500)["OMP_NUM_THREADS"] == "5"  # an exported value is the user's choice
