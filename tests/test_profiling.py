"""NVTX ranges (off: never called; on: emitted at each level), `[profiling]` traces and snapshots,
the CPU behaviour of the memory helpers, and the throughput metrics in the training log."""

from __future__ import annotations

import json
from pathlib import Path

import nvtx as nvtx_package
import pytest
import torch
from test_train_fixtures import tiny_config

from diffusionlm.errors import InputError
from diffusionlm.inference.generate import generate
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.throughput import model_flops_per_token
from diffusionlm.training.trainer import build_trainer, run_training
from profiling import memory, nvtx

FINE_TRAIN_RANGES = {"data", "forward", "backward", "grad_sync", "optimizer"}


@pytest.fixture
def pushed(monkeypatch) -> list[str]:
    """Names pushed to the real `nvtx` package; turned off again after the test."""
    names: list[str] = []
    depth = []
    monkeypatch.setattr(nvtx_package, "push_range", lambda name, domain=None: (names.append(name), depth.append(1)))
    monkeypatch.setattr(nvtx_package, "pop_range", lambda domain=None: depth.pop())
    yield names
    assert not depth, "every pushed range was popped"
    nvtx.configure(False)


def _two_steps(tmp_path) -> None:
    config = tiny_config(tmp_path, training={"max_train_iteration": 2, "skip_validation": True,
                                             "ckpting_save_iter": 2}, logging={"backend": "noop"})
    run_training(build_trainer(config))


def _sample(kv_cache: str = "prefix") -> None:
    torch.manual_seed(0)
    config = tiny_config(Path("unused")).model
    model = TransformerLM(config).eval()
    generate(model, torch.tensor([[1, 2, 3]]), steps=4, gen_length=8, block_length=4, temperature=0.0,
             mask_id=config.mask_token_id, kv_cache=kv_cache)


def test_off_never_calls_the_nvtx_package(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("nvtx called while off")

    monkeypatch.setattr(nvtx_package, "push_range", forbidden)
    monkeypatch.setattr(nvtx_package, "pop_range", forbidden)
    nvtx.configure_from_env({})
    assert nvtx.range("forward", nvtx.COARSE) is nvtx.range("backward", nvtx.VERBOSE)  # the shared null context
    _two_steps(tmp_path)
    _sample()


@pytest.mark.parametrize(("level", "present", "absent"), [
    ("coarse", {"train_step", "sample_block"}, FINE_TRAIN_RANGES | {"sample_step", "block.0"}),
    ("fine", {"train_step", "sample_block", "sample_step", "cache_refresh"} | FINE_TRAIN_RANGES, {"block.0"}),
    ("verbose", {"train_step", "sample_step", "cache_refresh", "block.0", "block.1"} | FINE_TRAIN_RANGES, set()),
])
def test_on_emits_the_ranges_of_each_level(tmp_path, pushed, level, present, absent):
    nvtx.configure_from_env({"TRANSFORMERLM_NVTX": "1", "TRANSFORMERLM_NVTX_LEVEL": level})
    _two_steps(tmp_path)
    _sample()
    assert present <= set(pushed) and not absent & set(pushed), sorted(set(pushed))


def test_environment_names_and_aliases(pushed):
    nvtx.configure_from_env({"DIFFUSIONLM_NVTX": "1", "DIFFUSIONLM_NVTX_LEVEL": "fine"})
    with nvtx.range("forward"):
        pass
    nvtx.configure_from_env({"TRANSFORMERLM_NVTX": "0", "DIFFUSIONLM_NVTX": "1"})  # the original name wins
    with nvtx.range("backward", nvtx.COARSE):
        pass
    assert pushed == ["forward"]
    with pytest.raises(InputError, match="TRANSFORMERLM_NVTX_LEVEL='loud'"):
        nvtx.configure_from_env({"TRANSFORMERLM_NVTX": "1", "TRANSFORMERLM_NVTX_LEVEL": "loud"})


def test_three_step_cpu_run_writes_a_chrome_trace_with_our_ranges(tmp_path):
    config = tiny_config(tmp_path, training={"max_train_iteration": 3, "skip_validation": True,
                                             "ckpting_save_iter": 3},
                         profiling={"trace_start_step": 0, "trace_end_step": 3, "memory_snapshot_step": 2})
    trainer = build_trainer(config)
    logged: list[dict] = []
    trainer.logger.log = lambda metrics, step: logged.append(metrics)
    run_training(trainer)
    events = {k: v for line in logged for k, v in line.items() if k.startswith("profiling.")}
    trace_path = tmp_path / "tiny" / "profiling" / "trace_steps_0-3.json"
    assert events["profiling.trace"] == str(trace_path)
    assert events["profiling.memory_snapshot"] == "not written (CUDA only)" and "MiB" in events["profiling.memory"]
    names = {event.get("name") for event in json.loads(trace_path.read_text())["traceEvents"]}
    assert {"train_step"} | FINE_TRAIN_RANGES <= names


def test_memory_helpers_are_safe_on_cpu(tmp_path):
    cpu = torch.device("cpu")
    assert memory.start_history(cpu) is False
    assert memory.dump_snapshot(tmp_path / "snap.pickle", cpu) is None and not (tmp_path / "snap.pickle").exists()
    memory.reset_peaks(cpu)
    memory.stop_history(cpu)
    assert memory.peaks(cpu)["max_rss_bytes"] > 10 << 20  # a Python process with torch holds more than that
    assert memory.summary(cpu).startswith("cpu memory: peak resident set")


def test_training_log_reports_model_tflops_and_mfu_from_the_shared_formula(tmp_path):
    config = tiny_config(tmp_path, training={"max_train_iteration": 2, "skip_validation": True,
                                             "ckpting_save_iter": 2}, logging={"log_every": 1, "peak_tflops": 0.001})
    trainer = build_trainer(config)
    logged: list[dict] = []
    trainer.logger.log = lambda metrics, step: logged.append(metrics)
    run_training(trainer)
    line = next(line for line in logged if "metrics.mfu" in line)
    flops = model_flops_per_token(config.model)
    assert line["metrics.model_tflops"] == pytest.approx(line["metrics.tokens_per_s"] * flops / 1e12)
    assert line["metrics.mfu"] == pytest.approx(line["metrics.tokens_per_s"] * flops / 1e9)


def test_infer_profiling_traces_sampler_steps_into_the_run_directory(tmp_path, capsys):
    from cli.infer import main as infer_main

    _two_steps(tmp_path)
    run_dir = tmp_path / "tiny"
    code = infer_main(["--checkpoint", str(run_dir), "--set", "inference.total_length=16", "--set", "inference.steps=4",
                       "--set", "inference.block_length=4", "--set", "inference.device=\"cpu\"",
                       "--set", "profiling.trace_start_step=1", "--set", "profiling.trace_end_step=3"])
    assert code == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    trace = run_dir / "profiling" / "trace_steps_1-3.json"
    assert record["profiling.trace"] == str(trace)
    names = [event.get("name") for event in json.loads(trace.read_text())["traceEvents"]]
    assert names.count("sample_step") == 2
