"""Benchmark the tokenizer against HF `tokenizers` (training) and `tiktoken` (encoding), same run.

    uv run diffusionlm-bench-tokenizer                     # from the repo root; reads ../shared/data
    uv run diffusionlm-bench-tokenizer --set stream_megabytes=10

Prints one table: ours, the reference, the ratio, the gate, and whether it passes.
"""

from __future__ import annotations

import argparse

from benchmarking.bench_tokenizer import format_table, run_benchmark
from cli.utils import run_cli
from config.bench_tokenizer import BenchTokenizerConfig


def _run(config: BenchTokenizerConfig, args: argparse.Namespace) -> None:
    print(format_table(config, run_benchmark(config)))


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, BenchTokenizerConfig, prog="diffusionlm-bench-tokenizer", description=__doc__,
                   default_config="bench_tokenizer.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
