"""Benchmark the sampler: baseline vs prefix/dual KV cache vs threshold parallel decoding.

    uv run diffusionlm-bench-infer                      # quick-start run, gen ~256, block 32
    uv run diffusionlm-bench-infer --set bench_infer.variants='["baseline","dual+threshold"]'

Prints a table (latency, tokens/s, NFE, tokens per forward, speedup, NLL/token of the generated
text and its change against the baseline, token agreement with the baseline), then one JSON
line per variant.
"""

from __future__ import annotations

import argparse

from cli.utils import print_result_records, run_cli
from config.bench_infer import BenchInferConfig


def _run(config: BenchInferConfig, args: argparse.Namespace) -> int:
    from benchmarking.bench_infer import format_table, run_benchmark

    results, shared = run_benchmark(config)
    print(format_table(results, shared))
    print_result_records(results, shared)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, BenchInferConfig, prog="diffusionlm-bench-infer", description=__doc__,
                   default_config="bench_infer.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
