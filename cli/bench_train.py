"""Benchmark our training step against ../shared/reference/ref_bench.py at the same shapes.

    uv run diffusionlm-bench-train                       # CPU: preset cpu-small, eager
    uv run diffusionlm-bench-train --config config/resources/bench_train_gpu.toml   # H100/H200: gpt2-small, bf16, compiled

Prints one table: median step time, tokens/s, ratio to the reference's eager step, peak
memory, and the MFU with its formula where the device's peak is known.
"""

from __future__ import annotations

import argparse
import json

from cli.utils import run_cli
from config.bench_train import BenchTrainConfig

def _run(config: BenchTrainConfig, args: argparse.Namespace) -> int:
    from benchmarking.bench_train import run_bench_train
    from diffusionlm.training.throughput import MFU_FORMULA

    header, *rows = run_bench_train(config)
    print(json.dumps(header))
    has_mfu = "mfu" in rows[0]
    columns = ["variant", "step ms (median)", "tokens/s", "vs reference eager", "peak memory MiB"] + (["MFU"] if has_mfu else [])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [row["variant"], f"{row['step_ms']:.1f}", f"{row['tokens_per_s']:,.0f}",
                 f"{row['vs_reference_eager']:.2f}x", f"{row['peak_memory_mib']:,.0f}"]
        if has_mfu:
            cells.append(f"{row['mfu']:.3f}")
        print("| " + " | ".join(cells) + " |")
    if has_mfu:
        print(f"{MFU_FORMULA}, peak = {header['peak_tflops']} TFLOP/s")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, BenchTrainConfig, prog="diffusionlm-bench-train", description=__doc__,
                   default_config="bench_train.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
