"""Sampling speed: the baseline LLaDA sampler against Fast-dLLM's prefix/dual KV caches and
confidence-threshold parallel decoding (and their refresh/compile options), on one model, one
batch of prompts, one device.

The variants alternate in rounds (the order reversed every other round), so a burst of
background load slows all of them rather than one. Per variant: median latency of a whole
batch generation and the spread of all its timed generations ((max - min) / median),
generated tokens/s, forward passes (NFE), tokens per forward, and two quality signals for the
approximations:
- NLL/token of the generated text under the model (LLaDA's conditional likelihood estimator,
  the same noise draws for every variant), compared with the baseline's ("within 5%" is the
  target);
- token agreement with the baseline's output (greedy decoding makes the baseline unique).
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

import torch

from config.bench_infer import BenchInferConfig, parse_variant
from config.schemas import InferenceConfig
from diffusionlm.diffusion.elbo import LikelihoodTally, conditional_log_likelihood
from diffusionlm.errors import InputError
from diffusionlm.inference.predictor import Predictor, SampleResult
from diffusionlm.utils.device import autocast_context
from diffusionlm.utils.threads import apply_num_threads


@dataclass
class VariantResult:
    name: str
    kv_cache: str
    threshold: float | None
    latency_s: float
    latency_spread: float
    tokens_per_s: float
    nfe: int
    tokens_per_forward: float
    nll_per_token: float
    nll_per_token_se: float
    agreement: float | None = None


def benchmark_prompts(config: BenchInferConfig, predictor: Predictor) -> list[list[int]]:
    """Token ids of the prompts: starts of validation sequences with `[data]`, else `inference.prompt`."""
    settings = config.bench_infer
    if config.data is None or config.data.val_split is None:
        return predictor.encode_prompts([config.inference.prompt] * settings.num_prompts, config.inference)
    from diffusionlm.data.streaming import StreamingBatches

    batches = StreamingBatches(config.data, predictor.tokenizer.encode, predictor.config.eot_token_id,
                               split=config.data.val_split, context_length=max(settings.prompt_tokens, 1),
                               batch_size=settings.num_prompts, loop=False)
    try:
        first = next(iter(batches))
    except StopIteration:
        raise InputError(f"data.val_split {config.data.val_split!r} has fewer than {settings.num_prompts} sequences") from None
    prompts = [row[: settings.prompt_tokens].tolist() for row in first]
    if len(prompts[0]) >= config.inference.total_length:
        raise InputError(f"bench_infer.prompt_tokens ({settings.prompt_tokens}) leaves no room to generate within "
                         f"inference.total_length ({config.inference.total_length})")
    return prompts


def generated_nll(predictor: Predictor, sample: SampleResult, prompts: list[list[int]], mc_num: int,
                  mc_batch_size: int, dtype: str) -> tuple[float, float]:
    """Mean NLL/token of each row's generated span given its prompt, with its standard error."""
    result, device = sample.result, predictor.device
    tally = LikelihoodTally(is_bound=True)
    for row, prompt in zip(result.tokens, prompts):
        answer = row[result.prompt_length:]
        generator = torch.Generator(device=device).manual_seed(0)
        with autocast_context(device, dtype):
            log_likelihood, standard_error = conditional_log_likelihood(
                predictor.model, torch.tensor(prompt, dtype=torch.long, device=device), answer,
                mask_id=predictor.config.mask_token_id, mc_num=mc_num, batch_size=mc_batch_size, generator=generator)
        tally.add(torch.tensor([-log_likelihood]), torch.tensor([standard_error]), [answer.numel()], num_bytes=[0])
    report = tally.report()
    return report.nll_per_token, report.nll_per_token_se


@dataclass
class _Variant:
    name: str
    settings: InferenceConfig
    latencies: list[float] = field(default_factory=list)
    first: SampleResult | None = None


def _variant(inference: InferenceConfig, config: BenchInferConfig, name: str) -> _Variant:
    parsed = parse_variant(name)
    # Every variant decodes the full length: an early stop at EOS would make the work differ.
    settings = inference.model_copy(update={
        "kv_cache": parsed.kv_cache, "threshold": config.bench_infer.threshold if parsed.threshold else None,
        "cache_refresh_every": parsed.refresh_every, "compile": parsed.compile, "stop_at_eos": False})
    return _Variant(name, settings)


def run_benchmark(config: BenchInferConfig) -> tuple[list[VariantResult], dict]:
    """Time every variant in alternating rounds; returns the results and the shared settings."""
    apply_num_threads(config.benchmark.num_threads)
    load_before = os.getloadavg()[0]
    predictor = Predictor.load(config.inference.checkpoint, config.inference.device)
    prompts = benchmark_prompts(config, predictor)
    variants = [_variant(config.inference, config, name) for name in config.bench_infer.variants]
    for variant in variants:  # warm-up, and the first compile of compiled variants
        for _ in range(config.benchmark.warmup_steps):
            predictor.sample_ids(prompts, variant.settings)
    for round_index in range(config.bench_infer.rounds):
        for variant in variants if round_index % 2 == 0 else variants[::-1]:
            for _ in range(config.benchmark.timed_steps):
                sample = predictor.sample_ids(prompts, variant.settings)
                variant.latencies.append(sample.latency_s)
                variant.first = variant.first or sample

    results, baseline_tokens = [], None
    for variant in variants:
        sample = variant.first
        nll, nll_se = generated_nll(predictor, sample, prompts, config.bench_infer.quality_mc_num,
                                    config.bench_infer.quality_mc_batch_size, variant.settings.dtype)
        latency = statistics.median(variant.latencies)
        result = VariantResult(
            name=variant.name, kv_cache=variant.settings.kv_cache, threshold=variant.settings.threshold,
            latency_s=latency, latency_spread=(max(variant.latencies) - min(variant.latencies)) / latency,
            tokens_per_s=sample.result.tokens.shape[0] * sample.result.gen_length / latency, nfe=sample.result.nfe,
            tokens_per_forward=sample.result.tokens_per_forward, nll_per_token=nll, nll_per_token_se=nll_se)
        generated = sample.result.tokens[:, sample.result.prompt_length:]
        if variant.name == "baseline":
            baseline_tokens = generated
        if baseline_tokens is not None:
            result.agreement = float((generated == baseline_tokens).float().mean())
        results.append(result)
    width = max(map(len, prompts))
    inference = config.inference
    shared = {"device": str(predictor.device), "weights": str(predictor.source), "batch": len(prompts),
              "prompt_tokens": width, "gen_length": inference.total_length - width, "steps": inference.steps,
              "block_length": inference.block_length, "remasking": inference.remasking,
              "threads": torch.get_num_threads(), "rounds": config.bench_infer.rounds,
              "load_avg_1min": f"{load_before:.1f}->{os.getloadavg()[0]:.1f}"}
    return results, shared


def format_table(results: list[VariantResult], shared: dict) -> str:
    baseline = next((r for r in results if r.name == "baseline"), None)
    header = ("variant", "kv_cache", "thresh", "NFE", "tok/fwd", "latency ms", "spread", "tok/s", "speedup",
              "NLL/tok", "± se", "dNLL %", "agree")
    rows = [header]
    for r in results:
        speedup = f"{baseline.latency_s / r.latency_s:.2f}x" if baseline else "-"
        delta = f"{100 * (r.nll_per_token / baseline.nll_per_token - 1):+.1f}" if baseline else "-"
        rows.append((r.name, r.kv_cache, "-" if r.threshold is None else f"{r.threshold:g}", str(r.nfe),
                     f"{r.tokens_per_forward:.2f}", f"{1000 * r.latency_s:.0f}", f"{100 * r.latency_spread:.0f}%",
                     f"{r.tokens_per_s:.1f}", speedup,
                     f"{r.nll_per_token:.3f}", f"{r.nll_per_token_se:.3f}", delta,
                     "-" if r.agreement is None else f"{r.agreement:.2f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    settings = ", ".join(f"{k}={v}" for k, v in shared.items())
    return f"{settings}\n" + "\n".join(lines)
