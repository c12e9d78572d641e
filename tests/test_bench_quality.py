"""The quality benchmark's plumbing at a tiny budget: tokenizer, both runs, scoring, the table."""

from __future__ import annotations

import re

import pytest
import torch

from benchmarking import bench_quality
from diffusionlm.data.corpus import write_corpus_text


@pytest.mark.slow
def test_quality_benchmark_trains_and_scores_both_models(tmp_path, capsys, one_thread):
    write_corpus_text(tmp_path / bench_quality.TRAIN_FILE, seed=0, num_stories=60)
    write_corpus_text(tmp_path / bench_quality.VALID_FILE, seed=1, num_stories=10)
    argv = ["--data-dir", str(tmp_path), "--work-dir", str(tmp_path / "work"), "--steps", "2", "--batch-size", "2",
            "--context-length", "32", "--d-model", "32", "--num-layers", "1", "--num-heads", "2",
            "--vocab-size", "320", "--val-sequences", "4", "--elbo-samples", "2", "--num-workers", "0",
            "--device", "cpu", "--threads", "3"]
    assert bench_quality.main(argv) == 0
    assert torch.get_num_threads() == 3  # --threads reaches the trainer, which sets the count
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (diffusion|ar) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out, flags=re.MULTILINE)
    assert [row[0] for row in rows] == ["diffusion", "ar"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    assert float(rows[0][3]) > 0 and float(rows[1][3]) == 0.0  # Monte-Carlo error; the causal likelihood is exact
    assert "ratio diffusion/AR bits per byte:" in out
    assert "scored on 4 validation windows" in out
