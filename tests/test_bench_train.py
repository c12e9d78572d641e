"""bench-train's MFU: the training log's formula (training/throughput.py), printed wherever the device's peak is known."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT

from cli.bench_train import main
from diffusionlm.training.throughput import MFU_FORMULA, mfu, peak_flops

REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "ref_bench.py"


def test_mfu_is_model_flops_over_peak():
    assert mfu(1000.0, 6_000_000, 1e10) == pytest.approx(0.6)


def test_peak_is_the_setting_else_unknown_on_cpu():
    assert peak_flops(torch.device("cpu")) is None
    assert peak_flops(torch.device("cpu"), 2.5) == 2.5e12


@pytest.mark.skipif(not REFERENCE.is_file(), reason="../shared/reference/ref_bench.py is absent")
def test_bench_train_prints_mfu_and_its_formula_when_the_peak_is_given(capsys):
    torch.set_num_threads(1)
    argv = ["--set", f"reference_path={REFERENCE}", "--set", "device=cpu", "--set", "preset=cpu-small",
            "--set", "rounds=1", "--set", "peak_tflops=1.0", "--set", "benchmark.warmup_steps=0",
            "--set", "benchmark.timed_steps=1", "--set", "benchmark.num_threads=1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| MFU |" in out and MFU_FORMULA in out and "load_avg_1min" in out
