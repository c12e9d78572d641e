"""Score held-out text under a trained model: an ELBO upper bound on perplexity for diffusion
models ("<= PPL", and bits per byte of the text), LLaDA's conditional log-likelihood
estimator, or the exact perplexity of a causal model. Each number comes with its standard
error over the sequences scored (Monte-Carlo noise included; the JSON line also has the
Monte-Carlo part alone) and with the text it covers: sequences, tokens, bytes, document ends.

Bits per byte divide the NLL by the UTF-8 bytes of the text the scored tokens stand for;
special tokens such as <|endoftext|> count 0 bytes (their NLL still counts).

    uv run diffusionlm-eval                                  # quick-start run, built-in validation split
    uv run diffusionlm-eval --set eval.text_file=notes.txt --set eval.num_samples=128
    uv run diffusionlm-eval --set eval.method=conditional --set eval.prompt_tokens=32

Prints one readable line, then one JSON line of metrics.
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

from cli.utils import run_cli
from config.eval import EvalConfig
from diffusionlm.errors import InputError


def _text_file_batches(path: Path, tokenizer, sequence_length: int, batch_size: int,
                       max_sequences: int) -> Iterator:
    """Consecutive `sequence_length` windows of the file's tokens, in batches (a partial last window is dropped)."""
    import torch

    needed = sequence_length * max_sequences
    try:
        with path.open(encoding="utf-8") as handle:
            ids = list(itertools.islice(tokenizer.encode_iterable(handle), needed))
    except UnicodeDecodeError as err:
        raise InputError(f"eval.text_file: {path} is not valid UTF-8 (byte {err.start})") from None
    count = len(ids) // sequence_length
    if count == 0:
        raise InputError(f"eval.text_file: {path} has {len(ids)} tokens, fewer than one sequence "
                         f"(eval.sequence_length = {sequence_length})")
    windows = torch.tensor(ids[: count * sequence_length]).view(count, sequence_length)
    yield from windows.split(batch_size)


def _run(config: EvalConfig, args: argparse.Namespace) -> int:
    import torch

    from diffusionlm.data.streaming import StreamingBatches
    from diffusionlm.diffusion.elbo import evaluate_perplexity
    from diffusionlm.inference.predictor import Predictor
    from diffusionlm.utils.device import autocast_context
    from diffusionlm.utils.threads import apply_num_threads

    settings = config.eval
    num_threads = apply_num_threads(settings.num_threads)
    predictor = Predictor.load(settings.checkpoint, settings.device)
    model_config, tokenizer = predictor.config, predictor.tokenizer
    method = settings.method if settings.method != "auto" else ("exact" if model_config.causal else "elbo")
    if (method == "exact") != model_config.causal:
        kind = "causal" if model_config.causal else "masked-diffusion"
        raise InputError(f"eval.method = {method!r} does not apply to this {kind} model (use \"auto\")")
    if settings.sequence_length > model_config.context_length:
        raise InputError(f"eval.sequence_length ({settings.sequence_length}) exceeds the model's context_length "
                         f"({model_config.context_length})")
    if settings.text_file is not None:
        batches = _text_file_batches(settings.text_file, tokenizer, settings.sequence_length, settings.batch_size,
                                     settings.max_sequences)
    else:
        if config.data.val_split is None:
            raise InputError("data.val_split is unset: name a split to score, or set eval.text_file")
        batches = StreamingBatches(config.data, tokenizer.encode, model_config.eot_token_id, split=config.data.val_split,
                                   context_length=settings.sequence_length, batch_size=settings.batch_size,
                                   seed=settings.seed, loop=False)

    def count_bytes(ids) -> int:
        return tokenizer.count_text_bytes(ids.tolist())

    noise_epsilon = settings.noise_epsilon if settings.noise_epsilon is not None else predictor.training_noise_epsilon
    device = predictor.device
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    with autocast_context(device, settings.dtype):
        report = evaluate_perplexity(
            predictor.model, (batch.to(device) for batch in batches), method=method,
            mask_id=model_config.mask_token_id, count_bytes=count_bytes, max_sequences=settings.max_sequences,
            num_samples=settings.num_samples, noise_epsilon=noise_epsilon,
            samples_per_forward=settings.samples_per_forward, mc_num=settings.mc_num,
            mc_batch_size=settings.mc_batch_size, prompt_tokens=settings.prompt_tokens, cfg_scale=settings.cfg_scale,
            separator_id=model_config.eot_token_id, generator=generator)
    print(f"{method}: {report.label} {report.perplexity:.3f} ± {report.perplexity_se:.3f} | "
          f"nll/token {report.nll_per_token:.4f} ± {report.nll_per_token_se:.4f} nats | "
          f"bits/byte {report.bits_per_byte:.4f} ± {report.bits_per_byte_se:.4f} | "
          f"scored {report.num_sequences} sequences: {report.num_tokens:,} tokens, {report.num_bytes:,} bytes of text, "
          f"{report.num_documents} document ends")
    print(json.dumps({
        "params.method": method, "params.weights": str(predictor.source),
        "params.sequence_length": settings.sequence_length, "params.num_threads": num_threads,
        "params.noise_epsilon": noise_epsilon if method == "elbo" else None,
        "params.num_samples": settings.num_samples if method == "elbo" else None,
        "params.mc_num": settings.mc_num if method == "conditional" else None,
        "metrics.label": report.label, "metrics.perplexity": report.perplexity,
        "metrics.perplexity_se": report.perplexity_se, "metrics.nll_per_token": report.nll_per_token,
        "metrics.nll_per_token_se": report.nll_per_token_se, "metrics.nll_per_token_mc_se": report.nll_per_token_mc_se,
        "metrics.bits_per_byte": report.bits_per_byte, "metrics.bits_per_byte_se": report.bits_per_byte_se,
        "metrics.bits_per_byte_mc_se": report.bits_per_byte_mc_se, "metrics.num_sequences": report.num_sequences,
        "metrics.num_tokens": report.num_tokens, "metrics.num_bytes": report.num_bytes,
        "metrics.num_documents": report.num_documents,
    }), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_run, EvalConfig, prog="diffusionlm-eval", description=__doc__, default_config="eval.toml",
                   argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
