"""Data loader benchmark: streaming + tokenizing tokens/s next to what a training step consumes.

    uv run python -m benchmarking.bench_data [--data FILE] [--consumed-tokens-per-s N]

Streams a text file through the `datasets` "text" loader (one row per line) and the GPT-2
tokenizer with 0 and 2 tokenizer workers, batches of 8 x 256, one full pass. The consumer
side is a plain training step (forward, cross-entropy over every position, backward, AdamW)
of the quick-start model (config/resources/train.toml: d_model 256, 4 layers, d_ff 704, the
built-in tokenizer's 2048-token vocab) on the same batch shape, on the CPU; pass
--consumed-tokens-per-s to compare against a number measured elsewhere instead. The last
column is the time the loader needs for one batch as a share of that step (the §10 target is
data-wait < 5%, which holds with room whenever this share is small, since workers prefetch).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from config.schemas import DataConfig, ModelConfig
from diffusionlm.data.streaming import StreamingBatches
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH_SIZE, CONTEXT_LENGTH = 8, 256


def loader_speed(data: Path, tokenizer: Tokenizer, num_workers: int) -> tuple[float, float, int]:
    """(tokens/s over one pass, seconds to the first batch, batches) for one worker count."""
    config = DataConfig(dataset_name="text", data_files=str(data), num_workers=num_workers)
    start = time.perf_counter()
    batches = StreamingBatches(config, tokenizer.encode, tokenizer.token_id("<|endoftext|>"), split="train",
                               context_length=CONTEXT_LENGTH, batch_size=BATCH_SIZE, loop=False)
    first_batch_s, count = 0.0, 0
    for _ in batches:
        count += 1
        if count == 1:
            first_batch_s = time.perf_counter() - start
    elapsed = time.perf_counter() - start
    batches.close()
    return count * BATCH_SIZE * CONTEXT_LENGTH / elapsed, first_batch_s, count


def train_step_tokens_per_s(vocab_size: int, steps: int) -> float:
    """Tokens/s of a plain training step of the quick-start-sized model (1 warm-up step untimed)."""
    from diffusionlm.models.transformer import TransformerLM

    config = ModelConfig(vocab_size=vocab_size, context_length=CONTEXT_LENGTH, d_model=256, num_layers=4,
                         num_heads=4, d_ff=704, mask_token_id=vocab_size - 1, eot_token_id=vocab_size - 2)
    model = TransformerLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab_size, (BATCH_SIZE, CONTEXT_LENGTH))

    def step() -> None:
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH_SIZE * CONTEXT_LENGTH / (time.perf_counter() - start)


def data_parser(prog: str, description: str, workers: list[int]) -> argparse.ArgumentParser:
    """The arguments the data benchmarks share: the text, the GPT-2 files, the worker counts."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--data", type=Path, default=SHARED_DATA / "tinystories_train.txt")
    parser.add_argument("--vocab", type=Path, default=SHARED_DATA / "gpt2_vocab.json")
    parser.add_argument("--merges", type=Path, default=SHARED_DATA / "gpt2_merges.txt")
    parser.add_argument("--workers", type=int, nargs="+", default=workers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = data_parser("bench_data", __doc__.splitlines()[0], [0, 2])
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--model-vocab", type=int, default=2048, help="vocab of the consumer model (quick start: 2048)")
    parser.add_argument("--consumed-tokens-per-s", type=float, help="skip the model and compare to this number")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(args.vocab, args.merges)
    size_mb = args.data.stat().st_size / 1e6
    print(f"data: {args.data} ({size_mb:.1f} MB), GPT-2 tokenizer, batch {BATCH_SIZE} x {CONTEXT_LENGTH}")

    if args.consumed_tokens_per_s is not None:
        consumed, consumer = args.consumed_tokens_per_s, "given on the command line"
    else:
        consumed = train_step_tokens_per_s(args.model_vocab, args.train_steps)
        consumer = f"train step, d_model 256, 4 layers, vocab {args.model_vocab}, CPU, 2 threads"
    print(f"consumer: {consumed:,.0f} tokens/s ({consumer})\n")
    print(f"{'loader':<22}{'tokens/s':>12}{'first batch s':>15}{'batches':>9}{'x consumer':>12}{'batch time / step':>19}")
    for workers in args.workers:
        tokens_per_s, first_batch_s, count = loader_speed(args.data, tokenizer, workers)
        print(f"{f'num_workers={workers}':<22}{tokens_per_s:>12,.0f}{first_batch_s:>15.2f}{count:>9}"
              f"{tokens_per_s / consumed:>12.1f}{consumed / tokens_per_s:>18.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
