"""Tokenizer benchmark: our BPE trainer and encoder side by side with HF `tokenizers` and `tiktoken`.

Training runs each happen in a fresh child process (`python -m benchmarking.bench_tokenizer
TASK_JSON`), so the peak RSS reported is that run's own (the largest of the process and the
workers it started) and neither trainer benefits from the other's warm caches. Encoding speed is measured
in this process, single-threaded, on the same text with the same GPT-2 ranks, and the ids must
be identical. `tiktoken` and `tokenizers` are dev dependencies, imported only where used.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from config.bench_tokenizer import BenchTokenizerConfig
from diffusionlm.errors import InputError
from diffusionlm.tokenizer.io import load_tokenizer, printable_to_token
from diffusionlm.tokenizer.pretokenize import GPT2_PATTERN

EOT = "<|endoftext|>"
GATES = {"train_time_ratio": 3.0, "train_peak_rss_mb": 1024, "small_train_s": 1.5, "encode_ratio": 0.3, "stream_peak_rss_mb": 200}


def _import_reference(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise InputError(f"the reference package {name!r} is missing; install the dev group: uv sync --group dev") from None


def tiktoken_gpt2(vocab_path: str | Path):
    """tiktoken's GPT-2 Encoding built from GPT-2's `vocab.json` (ranks = ids), with no download."""
    tiktoken = _import_reference("tiktoken")
    vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
    ranks = {printable_to_token(token): rank for token, rank in vocab.items() if token != EOT}
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: vocab[EOT]})


def _own_peak_rss_kib() -> int:
    """This process's peak RSS since it started its program.

    On Linux `ru_maxrss` carries over the parent's peak through fork+exec, which would charge
    the benchmark's own memory to each child; /proc's VmHWM belongs to this program alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_mb() -> float:
    """Peak resident memory of this process or of any finished worker it started, in MiB."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(_own_peak_rss_kib(), children) / 1024


# ---- child-process tasks ------------------------------------------------------------------

def _train_ours(path: str, vocab_size: int, special_tokens: list[str], num_processes: int | None) -> dict:
    from diffusionlm.tokenizer.bpe_trainer import train_bpe

    started = time.perf_counter()
    vocab, merges = train_bpe(path, vocab_size, special_tokens, num_processes=num_processes)
    return {"seconds": time.perf_counter() - started, "vocab_size": len(vocab), "merges": len(merges)}


def _train_hf(path: str, vocab_size: int, special_tokens: list[str]) -> dict:
    tokenizers = _import_reference("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers

    started = time.perf_counter()
    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([path], trainer)
    return {"seconds": time.perf_counter() - started, "vocab_size": tokenizer.get_vocab_size()}


def _stream_lines(path: str, megabytes: int) -> Iterator[str]:
    """The lines of `path` over and over until `megabytes` of UTF-8 have been produced."""
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    produced, limit = 0, megabytes * 1_000_000
    while True:
        for line in lines:
            yield line
            produced += len(line.encode("utf-8"))
            if produced >= limit:
                return


def _encode_stream(vocab_path: str, merges_path: str, source_path: str, megabytes: int) -> dict:
    tokenizer = load_tokenizer(vocab_path, merges_path, special_tokens=[EOT])
    baseline = peak_rss_mb()
    started = time.perf_counter()
    count = sum(1 for _ in tokenizer.encode_iterable(_stream_lines(source_path, megabytes)))
    return {"seconds": time.perf_counter() - started, "tokens": count, "baseline_rss_mb": baseline}


_TASKS = {"train_ours": _train_ours, "train_hf": _train_hf, "encode_stream": _encode_stream}


def run_in_child(task: str, **kwargs) -> dict:
    """Run one task in a fresh interpreter; its result plus that process's peak RSS."""
    request = json.dumps({"task": task, "kwargs": kwargs})
    done = subprocess.run([sys.executable, "-m", "benchmarking.bench_tokenizer", request],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark task {task} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _child_main(request: str) -> None:
    spec = json.loads(request)
    result = _TASKS[spec["task"]](**spec["kwargs"])
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


# ---- in-process measurements --------------------------------------------------------------

def measure_encode(config: BenchTokenizerConfig) -> dict:
    """MB/s of our encode (fresh tokenizer each repeat, so the pre-token cache starts empty) and
    of tiktoken's, best of `encode_repeats`; fails if the ids differ."""
    text = config.encode_path.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    reference = tiktoken_gpt2(config.gpt2_vocab_path)
    ours_s, reference_s = float("inf"), float("inf")
    for _ in range(config.encode_repeats):
        tokenizer = load_tokenizer(config.gpt2_vocab_path, config.gpt2_merges_path, special_tokens=[EOT])
        started = time.perf_counter()
        ours_ids = tokenizer.encode(text)
        ours_s = min(ours_s, time.perf_counter() - started)
        started = time.perf_counter()
        reference_ids = reference.encode(text, allowed_special={EOT})
        reference_s = min(reference_s, time.perf_counter() - started)
    if ours_ids != reference_ids:
        raise RuntimeError(f"encode of {config.encode_path} differs from tiktoken's ids")
    started = time.perf_counter()
    tokenizer.encode(text)
    warm_s = time.perf_counter() - started
    return {"ours_mb_s": megabytes / ours_s, "warm_mb_s": megabytes / warm_s, "tiktoken_mb_s": megabytes / reference_s}


def run_benchmark(config: BenchTokenizerConfig) -> dict:
    """Every measurement, as a flat dict (also printed as a table by `format_table`)."""
    for name in ("tokenizers", "tiktoken"):
        _import_reference(name)
    load_tokenizer(config.gpt2_vocab_path, config.gpt2_merges_path, special_tokens=[EOT])  # bad files fail before any timing
    specials = config.special_tokens
    train_args = dict(path=str(config.train_corpus_path), vocab_size=config.train_vocab_size, special_tokens=specials)
    results = {"train_ours": run_in_child("train_ours", **train_args, num_processes=config.num_processes),
               "train_hf": run_in_child("train_hf", **train_args)}
    results["small_ours"] = run_in_child(
        "train_ours", path=str(config.small_corpus_path), vocab_size=256 + config.small_num_merges + len(specials),
        special_tokens=specials, num_processes=config.num_processes,
    )
    results["encode"] = measure_encode(config)
    results["stream"] = run_in_child(
        "encode_stream", vocab_path=str(config.gpt2_vocab_path), merges_path=str(config.gpt2_merges_path),
        source_path=str(config.stream_source_path), megabytes=config.stream_megabytes,
    )
    return results


def format_table(config: BenchTokenizerConfig, results: dict) -> str:
    ours, hf, small = results["train_ours"], results["train_hf"], results["small_ours"]
    encode, stream = results["encode"], results["stream"]
    time_ratio = ours["seconds"] / hf["seconds"]
    encode_ratio = encode["ours_mb_s"] / encode["tiktoken_mb_s"]
    rows = [
        (f"BPE train {config.train_corpus_path.name}, vocab {config.train_vocab_size}: time",
         f"{ours['seconds']:.2f} s", f"{hf['seconds']:.2f} s (HF tokenizers)", f"{time_ratio:.2f}x",
         f"<= {GATES['train_time_ratio']}x", time_ratio <= GATES["train_time_ratio"]),
        ("  same run: peak RSS", f"{ours['peak_rss_mb']:.0f} MiB", f"{hf['peak_rss_mb']:.0f} MiB", "",
         f"< {GATES['train_peak_rss_mb']} MiB", ours["peak_rss_mb"] < GATES["train_peak_rss_mb"]),
        (f"BPE train {config.small_corpus_path.name}, {config.small_num_merges} merges: time",
         f"{small['seconds']:.2f} s", "", "", f"< {GATES['small_train_s']} s", small["seconds"] < GATES["small_train_s"]),
        (f"encode {config.encode_path.name}, GPT-2 ranks, 1 thread (cold cache)",
         f"{encode['ours_mb_s']:.2f} MB/s", f"{encode['tiktoken_mb_s']:.2f} MB/s (tiktoken)", f"{encode_ratio:.2f}x",
         f">= {GATES['encode_ratio']}x, same ids", encode_ratio >= GATES["encode_ratio"]),
        ("  same text, warm cache", f"{encode['warm_mb_s']:.2f} MB/s", "", f"{encode['warm_mb_s'] / encode['tiktoken_mb_s']:.2f}x", "", None),
        (f"encode_iterable, {config.stream_megabytes} MB stream: peak RSS",
         f"{stream['peak_rss_mb']:.0f} MiB", f"(after loading: {stream['baseline_rss_mb']:.0f} MiB)",
         f"{config.stream_megabytes / stream['seconds']:.2f} MB/s", f"< {GATES['stream_peak_rss_mb']} MiB",
         stream["peak_rss_mb"] < GATES["stream_peak_rss_mb"]),
    ]
    header = ("measurement", "ours", "reference", "ratio", "gate", "pass")
    cells = [header] + [(*row[:5], "" if row[5] is None else ("yes" if row[5] else "NO")) for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [" | ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


if __name__ == "__main__":
    _child_main(sys.argv[1])
