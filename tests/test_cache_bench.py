"""`diffusionlm-bench-infer` end to end on a tiny run directory (a smoke test, not a timing)."""

from __future__ import annotations

import json

import torch
from test_infer_cli import write_run

from cli.bench_infer import main

CONFIG = """
[inference]
checkpoint = {checkpoint}
steps = 24
total_length = 32
block_length = 8
device = "cpu"
stop_at_eos = false

[benchmark]
warmup_steps = 0
timed_steps = 1

[bench_infer]
variants = ["baseline", "dual+threshold+refresh2"]
rounds = 2
num_prompts = 2
prompt_tokens = 4
quality_mc_num = 4
quality_mc_batch_size = 2

[data]
dataset_name = "builtin"
val_split = "validation"
shuffle_buffer_size = 0
"""


def test_runs_with_a_data_section_and_reports_every_variant(tmp_path, capsys):
    torch.set_num_threads(1)
    write_run(tmp_path / "run")
    config = tmp_path / "bench.toml"
    config.write_text(CONFIG.format(checkpoint=json.dumps(str(tmp_path / "run"))), encoding="utf-8")
    assert main(["--config", str(config)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["metrics.name"] for r in records] == ["baseline", "dual+threshold+refresh2"]
    baseline, fast = records
    assert baseline["params.gen_length"] == 28 and baseline["metrics.nfe"] == 24
    assert fast["metrics.nfe"] <= 28  # threshold decoding: at least one token per step
    assert baseline["metrics.agreement"] == 1.0
    assert all(r["metrics.tokens_per_s"] > 0 and r["metrics.nll_per_token"] > 0 for r in records)
    assert "speedup" in lines[1] and "spread" in lines[1]
    assert all(r["params.rounds"] == 2 and r["metrics.latency_spread"] >= 0 for r in records)
