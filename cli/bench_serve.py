"""Benchmark the server: N concurrent loopback clients, request batching on vs off, one run.

    uv run diffusionlm-bench-serve                      # quick-start run, 16 clients x 4 requests
    uv run diffusionlm-bench-serve --set bench_serve.clients=4 --set server.max_batch_size=4

Prints a table (requests answered, wall time, requests/s, tokens/s, p50/p99 latency, mean
batch, tokens per forward per sequence and over the batch), the batching speedup, then one JSON
line per run.
"""

from __future__ import annotations

import argparse

from cli.utils import print_result_records, run_cli
from config.bench_serve import BenchServeConfig


def _run(config: BenchServeConfig, args: argparse.Namespace) -> int:
    from benchmarking.bench_serve import format_table, run_benchmark

    results, shared = run_benchmark(config)
    print(format_table(results, shared))
    print_result_records(results, shared)
    return 0 if all(result.answered == result.requests for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, BenchServeConfig, prog="diffusionlm-bench-serve", description=__doc__,
                   default_config="bench_serve.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
