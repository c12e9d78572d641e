"""Offline data path: diffusionlm-make-data throughput, and the training step's data-wait when
it reads the result (memmap) instead of tokenizing on the fly (streaming).

    uv run python -m benchmarking.bench_make_data [--data FILE] [--workers 1 2] [--steps 30]

1. make-data on `--data` (TinyStories text, `<|endoftext|>`-separated documents) with the
   GPT-2 tokenizer, memmap + parquet, once per worker count: tokens/s of the whole job.
2. The trainer itself (`build_trainer` + `run_training`, the quick-start model: d_model 128,
   4 layers, the built-in 1024-token tokenizer, batch 8 x 256, CPU) for `--steps` steps reading
   the text file streamed (0 and 2 tokenizer workers) and a memmap of it made with the same
   tokenizer: `metrics.data_wait_frac` (share of wall time spent waiting for batches) and step
   time, from the trainer's own log. (With the GPT-2 vocabulary the LM head makes a CPU step
   take seconds, which hides any data cost.)
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarking.bench_data import data_parser
from config.make_data import MakeDataConfig
from config.train import TrainConfig
from databuilder.build import make_data
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.training.trainer import build_trainer, run_training

SEPARATOR = "<|endoftext|>"


def make_data_speed(data: Path, tokenizer_files: dict, workers: int, output_dir: Path) -> tuple[int, float]:
    """(tokens, seconds) of one make-data run over `data` (train split only); `tokenizer_files`
    empty means the built-in tokenizer."""
    config = MakeDataConfig.model_validate({
        "data": {"dataset_name": "text", "data_files": {"train": str(data)}, "val_split": None,
                 "document_separator": SEPARATOR, "num_workers": workers, "tokenizer": tokenizer_files},
        "output": {"output_dir": str(output_dir), "progress": False}})
    tokenizer = load_tokenizer(tokenizer_files.get("vocab_path"), tokenizer_files.get("merges_path"))
    start = time.perf_counter()
    reports = make_data(config, tokenizer)
    return sum(report.tokens for report in reports), time.perf_counter() - start


def data_wait(data_section: dict, steps: int, runs_path: Path) -> tuple[float, float]:
    """(mean data_wait_frac, median seconds per step) over `steps` training steps after the first log."""
    config = TrainConfig.model_validate({
        "model": {"vocab_size": 1024, "context_length": 256, "d_model": 128, "num_layers": 4, "num_heads": 4,
                  "d_ff": 384, "mask_token_id": 1023, "eot_token_id": 1022},
        "training": {"device": "cpu", "batch_size": 8, "max_train_iteration": steps, "skip_validation": True,
                     "ckpting_save_iter": steps, "sample_at_end": False},
        "data": {**data_section, "shuffle_buffer_size": 1000},
        "logging": {"backend": "noop", "log_every": 5, "run_name": "bench"},
        "checkpoint": {"runs_path": str(runs_path), "export_safetensors": False}})
    trainer = build_trainer(config)
    lines: list[dict] = []
    trainer.logger.log = lambda metrics, step: lines.append(metrics)
    run_training(trainer)
    logged = [line for line in lines if "metrics.data_wait_frac" in line][1:]  # the first window holds warm-up
    return (statistics.mean(line["metrics.data_wait_frac"] for line in logged),
            statistics.median(2048 / line["metrics.tokens_per_s"] for line in logged))


def main(argv: list[str] | None = None) -> int:
    parser = data_parser("bench_make_data", __doc__.splitlines()[0], [1, 2])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    tokenizer_files = {"vocab_path": str(args.vocab), "merges_path": str(args.merges),
                       "special_tokens": [SEPARATOR, "<|mask|>"]}
    print(f"data: {args.data} ({args.data.stat().st_size / 1e6:.1f} MB), GPT-2 tokenizer, memmap + parquet\n")
    with tempfile.TemporaryDirectory(prefix="bench-make-data-") as folder:
        folder = Path(folder)
        print(f"{'make-data':<22}{'tokens':>12}{'seconds':>10}{'tokens/s':>12}")
        for workers in args.workers:
            tokens, seconds = make_data_speed(args.data, tokenizer_files, workers, folder / f"out{workers}")
            print(f"{f'num_workers={workers}':<22}{tokens:>12,}{seconds:>10.1f}{tokens / seconds:>12,.0f}")
        make_data_speed(args.data, {}, 2, folder / "builtin")
        memmap = {"dataset_name": "memmap", "data_files": {"train": str(folder / "builtin" / "train.dat")}}
        print(f"\n{'training reads':<30}{'data_wait_frac':>16}{'step ms':>10}   ({args.steps} steps, batch 8 x 256)")
        sources = [("streaming, num_workers=0", 0), ("streaming, num_workers=2", 2), ("memmap", None)]
        for index, (name, workers) in enumerate(sources):
            section = memmap if workers is None else {
                "dataset_name": "text", "data_files": {"train": str(args.data)}, "document_separator": SEPARATOR,
                "num_workers": workers}
            frac, step_s = data_wait(section, args.steps, folder / f"runs{index}")
            print(f"{name:<30}{frac:>16.2%}{step_s * 1e3:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
