"""Learning-quality benchmark: masked diffusion vs the autoregressive baseline at a fixed token budget.

    uv run python -m benchmarking.bench_quality                       # the full recipe (long on a CPU)
    uv run python -m benchmarking.bench_quality --steps 100 --val-sequences 64   # a reduced budget

The recipe: TinyStories (`tinystories_train.txt` in --data-dir, stories as documents split on
`<|endoftext|>`, packed into windows), a byte-level BPE tokenizer of 4,096 tokens trained by our
own trainer on the same file (cached in --work-dir), a Transformer of d_model 256, 4 layers,
4 heads, d_ff 704, context 256, batch 16, 1,000 steps: 4.1M training tokens. Both models train
with the shipped recipe (`config/resources/train.toml`'s `[optimizer]` and `[training]`), its
warmup and cosine stretched to the budget; the only difference is `[model].causal`.

Both are scored on the same first --val-sequences packed windows of `tinystories_valid.txt`, in
bits per UTF-8 byte: the diffusion model by its ELBO bound (--elbo-samples noise levels per
sequence, stratified over [eps, 1] with the fixed eps of NOISE_EPSILON, whatever the training
recipe does with t, so a recipe change is scored by the same bound), the causal model exactly.
Two standard errors: the total one (the spread over sequences, Monte-Carlo noise included) and
the Monte-Carlo part alone (0 for the exact likelihood); both models see the same sequences. The last line is the ratio diffusion/AR (lower is better, 1.0
would mean masked diffusion learns as much per token as next-token prediction).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from config.io import apply_override, read_toml, resource_path, validate_config
from config.schemas import NOISE_EPSILON, DataConfig
from config.special_tokens import DEFAULT_SPECIAL_TOKENS, EOT_TOKEN, MASK_TOKEN
from config.train import TrainConfig
from diffusionlm.data.streaming import StreamingBatches
from diffusionlm.diffusion.elbo import PerplexityReport, evaluate_perplexity
from diffusionlm.tokenizer.bpe_trainer import train_bpe
from diffusionlm.tokenizer.io import MERGES_FILE, SPECIAL_TOKENS_FILE, VOCAB_FILE, load_tokenizer, save_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.training.trainer import build_trainer, run_training
from diffusionlm.utils.device import autocast_context

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TRAIN_FILE, VALID_FILE = "tinystories_train.txt", "tinystories_valid.txt"
WARMUP_FRACTION = 0.05  # of the steps; train.toml warms up for 30 of its 600


@dataclass
class Outcome:
    name: str
    report: PerplexityReport
    train_s: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_quality", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help=f"holds {TRAIN_FILE} and {VALID_FILE}")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bench_quality"),
                        help="tokenizer cache and the two runs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--val-sequences", type=int, default=256, help="validation windows scored")
    parser.add_argument("--elbo-samples", type=int, default=16, help="noise levels per sequence for the ELBO")
    parser.add_argument("--models", default="diffusion,ar", help="comma-separated: diffusion, ar")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training and scoring (training.num_threads; unset: its default)")
    parser.add_argument("--num-workers", type=int, default=1, help="tokenizer worker processes of the loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="extra train-config override for both models (a recipe change), repeatable")
    return parser.parse_args(argv)


def cached_tokenizer(train_file: Path, vocab_size: int, work_dir: Path) -> Path:
    """Our BPE tokenizer of `vocab_size` trained on `train_file`, trained once per file and size."""
    stat = train_file.stat()
    folder = work_dir / f"tokenizer-{vocab_size}-{stat.st_size}-{stat.st_mtime_ns}"
    if not (folder / SPECIAL_TOKENS_FILE).is_file():
        start = time.perf_counter()
        vocab, merges = train_bpe(train_file, vocab_size, list(DEFAULT_SPECIAL_TOKENS))
        save_tokenizer(folder, vocab, merges, Tokenizer(vocab, merges, list(DEFAULT_SPECIAL_TOKENS)).special_tokens)
        print(f"tokenizer: {len(vocab)} tokens trained on {train_file} in {time.perf_counter() - start:.1f}s -> {folder}")
    return folder


def train_config(args: argparse.Namespace, tokenizer_dir: Path, tokenizer: Tokenizer, causal: bool,
                 run_name: str) -> TrainConfig:
    """train.toml with the benchmark's settings, then the user's --set overrides, validated."""
    files = {"train": str(args.data_dir / TRAIN_FILE), "validation": str(args.data_dir / VALID_FILE)}
    values = {
        "model.vocab_size": args.vocab_size, "model.context_length": args.context_length,
        "model.d_model": args.d_model, "model.num_layers": args.num_layers, "model.num_heads": args.num_heads,
        "model.d_ff": 64 * round(8 * args.d_model / 3 / 64) or 64, "model.causal": causal,
        "model.eot_token_id": tokenizer.token_id(EOT_TOKEN), "model.mask_token_id": tokenizer.token_id(MASK_TOKEN),
        "optimizer.warmup_iters": max(1, round(WARMUP_FRACTION * args.steps)),
        "optimizer.cosine_cycle_iters": max(2, args.steps),
        "training.device": args.device, "training.seed": args.seed, "training.batch_size": args.batch_size,
        "training.max_train_iteration": args.steps, "training.ckpting_save_iter": args.steps,
        "training.skip_validation": True, "training.sample_at_end": False, "training.num_threads": args.threads,
        "data.dataset_name": "text", "data.data_files": files, "data.document_separator": EOT_TOKEN,
        "data.num_workers": args.num_workers,
        "data.tokenizer.vocab_path": str(tokenizer_dir / VOCAB_FILE),
        "data.tokenizer.merges_path": str(tokenizer_dir / MERGES_FILE),
        "data.tokenizer.special_tokens_path": str(tokenizer_dir / SPECIAL_TOKENS_FILE),
        "logging.backend": "noop", "logging.run_name": run_name,
        "checkpoint.runs_path": str(args.work_dir / "runs"), "checkpoint.keep_last_n": 1,
        "checkpoint.export_safetensors": False,
    }
    data = read_toml(resource_path("train.toml"))
    for key, value in values.items():
        *sections, name = key.split(".")
        table = data
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
    for override in args.overrides:
        apply_override(data, TrainConfig, override)
    return validate_config(TrainConfig, data, "bench_quality train config")


def score(model: torch.nn.Module, config: TrainConfig, tokenizer: Tokenizer, args: argparse.Namespace,
          device: torch.device) -> PerplexityReport:
    """Bits per byte on the first `val_sequences` windows of the validation file."""
    data = DataConfig.model_validate({**config.data.model_dump(), "shuffle_buffer_size": 0})
    batches = StreamingBatches(data, tokenizer.encode, config.model.eot_token_id, split="validation",
                               context_length=config.model.context_length, batch_size=args.batch_size, loop=False)
    model.eval()
    try:
        with torch.no_grad(), autocast_context(device, config.training.dtype):
            return evaluate_perplexity(
                model, (batch.to(device) for batch in batches), method="exact" if config.model.causal else "elbo",
                mask_id=config.model.mask_token_id, count_bytes=lambda ids: tokenizer.count_text_bytes(ids.tolist()),
                max_sequences=args.val_sequences, noise_epsilon=NOISE_EPSILON, num_samples=args.elbo_samples,
                generator=torch.Generator().manual_seed(args.seed))
    finally:
        batches.close()


def run_one(name: str, causal: bool, args: argparse.Namespace, tokenizer_dir: Path, tokenizer: Tokenizer) -> Outcome:
    run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
    config = train_config(args, tokenizer_dir, tokenizer, causal, run_name)
    trainer = build_trainer(config)
    start = time.perf_counter()
    run_training(trainer)
    train_s = time.perf_counter() - start
    return Outcome(name, score(trainer.model, config, tokenizer, args, trainer.device), train_s)


def print_table(outcomes: list[Outcome], args: argparse.Namespace) -> None:
    tokens = args.steps * args.batch_size * args.context_length
    print(f"\nbudget: {args.steps} steps x {args.batch_size} x {args.context_length} = {tokens:,} tokens; "
          f"d_model {args.d_model}, {args.num_layers} layers, vocab {args.vocab_size}; "
          f"scored on {outcomes[0].report.num_sequences} validation windows")
    print(f"recipe: train.toml{''.join(f' --set {override}' for override in args.overrides)}")
    print("| model | bits/byte | s.e. | MC s.e. | nats/token | estimate | train s |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for outcome in outcomes:
        report = outcome.report
        kind = f"ELBO bound, {args.elbo_samples} samples" if report.is_bound else "exact"
        print(f"| {outcome.name} | {report.bits_per_byte:.4f} | {report.bits_per_byte_se:.4f} | "
              f"{report.bits_per_byte_mc_se:.4f} | "
              f"{report.nll_per_token:.4f} | {kind} | {outcome.train_s:.0f} |")
    by_name = {outcome.name: outcome.report for outcome in outcomes}
    if {"diffusion", "ar"} <= set(by_name):
        ratio = by_name["diffusion"].bits_per_byte / by_name["ar"].bits_per_byte
        print(f"ratio diffusion/AR bits per byte: {ratio:.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = set(names) - {"diffusion", "ar"}
    if unknown or not names:
        raise SystemExit(f"bench_quality: error: --models takes diffusion and/or ar, not {sorted(unknown) or names}")
    for file in (TRAIN_FILE, VALID_FILE):
        if not (args.data_dir / file).is_file():
            raise SystemExit(f"bench_quality: error: {args.data_dir / file} not found (set --data-dir)")
    tokenizer_dir = cached_tokenizer(args.data_dir / TRAIN_FILE, args.vocab_size, args.work_dir)
    tokenizer = load_tokenizer(tokenizer_dir / VOCAB_FILE, tokenizer_dir / MERGES_FILE, tokenizer_dir / SPECIAL_TOKENS_FILE)
    outcomes = [run_one(name, name == "ar", args, tokenizer_dir, tokenizer) for name in names]
    print_table(outcomes, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
