"""`diffusionlm-bench-serve` end to end on a tiny model (a smoke test, not a timing)."""

from __future__ import annotations

import json

import pytest
from serve_helpers import write_export

from cli.bench_serve import main

# Talks to itself over 127.0.0.1: skips, saying why, where loopback is down.
pytestmark = pytest.mark.usefixtures("loopback")


def test_reports_both_runs_with_every_request_answered_once(tmp_path, capsys):
    export = write_export(tmp_path / "export")
    args = ["--set", f"inference.checkpoint={json.dumps(str(export))}", "--set", "inference.device=cpu",
            "--set", "inference.steps=8", "--set", "inference.block_length=8", "--set", "benchmark.num_threads=1",
            "--set", "bench_serve.clients=3", "--set", "bench_serve.requests_per_client=2",
            "--set", "bench_serve.max_tokens=8", "--set", "server.max_batch_size=3", "--set", "server.max_wait_ms=200"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [record["metrics.mode"] for record in records] == ["batched", "sequential"]
    batched, sequential = records
    assert batched["metrics.answered"] == sequential["metrics.answered"] == 6
    assert batched["metrics.mean_batch"] > 1 and sequential["metrics.mean_batch"] == 1
    assert batched["params.same_text"] == "6/6"
    assert any(line.startswith("batching speedup") for line in lines)
