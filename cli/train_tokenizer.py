"""Train a byte-level BPE tokenizer and write vocab.json, merges.txt and special_tokens.json.

    uv run diffusionlm-train-tokenizer                                  # built-in corpus, vocab 2048
    uv run diffusionlm-train-tokenizer --set input_path=../shared/data/tinystories_train.txt --set vocab_size=10000

The last `heldout_bytes` of the input are not trained on; the bytes/token reported is measured
on them, so it says how well the tokenizer compresses text it has not seen.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cli.utils import run_cli
from config.train_tokenizer import TrainTokenizerConfig
from diffusionlm.data.corpus import write_corpus_text
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.bpe_trainer import heldout_offset, train_bpe
from diffusionlm.tokenizer.io import save_tokenizer
from diffusionlm.tokenizer.tokenizer import Tokenizer
from diffusionlm.utils.files import check_output_dir


def _read_heldout(path: Path, start: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: not valid UTF-8 ({err.reason} at byte {start + err.start})") from None


def train_and_save(config: TrainTokenizerConfig, input_path: Path, source: str) -> None:
    """Train on `input_path` (called `source` in what is printed) minus its held-out tail,
    write the files, print what came out."""
    end = heldout_offset(input_path, config.heldout_bytes)
    started = time.perf_counter()
    vocab, merges = train_bpe(
        input_path, config.vocab_size, config.special_tokens,
        num_processes=config.num_processes, progress=config.progress, end_offset=end,
    )
    seconds = time.perf_counter() - started
    tokenizer = Tokenizer(vocab, merges, config.special_tokens)
    paths = save_tokenizer(config.output_dir, vocab, merges, tokenizer.special_tokens)
    print(f"trained on {end:,} bytes of {source} in {seconds:.2f} s")
    print(f"vocab size {len(vocab)} ({len(merges)} merges), special tokens {tokenizer.special_tokens}")
    if len(vocab) < config.vocab_size:
        print(f"note: every word became a single token after {len(merges)} merges, so the vocabulary "
              f"is smaller than vocab_size = {config.vocab_size}")
    heldout = _read_heldout(input_path, end)
    if heldout:
        num_bytes = len(heldout.encode("utf-8"))
        print(f"held-out {num_bytes:,} bytes: {num_bytes / max(len(tokenizer.encode(heldout)), 1):.3f} bytes/token")
    print("wrote " + ", ".join(str(path) for path in paths))


def _run(config: TrainTokenizerConfig, args: argparse.Namespace) -> None:
    check_output_dir(config.output_dir, "output_dir")
    if config.input_path is not None:
        train_and_save(config, config.input_path, str(config.input_path))
        return
    source = f"the built-in corpus (builtin_num_stories = {config.builtin_num_stories})"
    with tempfile.TemporaryDirectory(prefix="diffusionlm-corpus-") as folder:
        corpus_path = Path(folder) / "builtin_corpus.txt"
        write_corpus_text(corpus_path, config.builtin_seed, config.builtin_num_stories)
        try:
            train_and_save(config, corpus_path, source)
        except InputError as err:  # the trainer names the file it read: here a temp file the user never saw
            raise InputError(str(err).replace(str(corpus_path), source)) from None


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, TrainTokenizerConfig, prog="diffusionlm-train-tokenizer", description=__doc__,
                   default_config="train_tokenizer.toml", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
