"""The masked-diffusion sampler with LLaDA's semantics (Nie et al. 2025, `generate.py`).

The canvas is the prompt followed by `gen_length` mask tokens. It is decoded in blocks, left
to right (semi-autoregressive); each block gets its share of the steps, and each step:

1. runs the denoiser on the canvas (with classifier-free guidance when `cfg_scale > 0`),
2. samples a token for every position of the block (Gumbel-max in float64, argmax at T = 0),
3. scores each sampled token (`remasking`: its probability, a random number, the top-1/top-2
   margin, or the negative entropy),
4. commits the most confident still-masked positions of the block: a precomputed count per
   step (the block's masks split evenly, remainder first), or with `threshold` every position
   at or above it and at least one (Fast-dLLM parallel decoding).

Committed tokens never change. Where the references misbehave we fix them: the mask id and
ids beyond the tokenizer (`vocab_limit`) are never produced, `confidence_eos_eot_inf` defers
both EOS and EOT (LLaDA's sampler only defers EOT, issue #137), no mask survives, and
`stop_at_eos` cuts each output at its first EOS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from diffusionlm.errors import InputError
from diffusionlm.inference.cache import KV_CACHE_MODES, BlockDenoiser
from diffusionlm.inference.sampling import (
    REMASKING_STRATEGIES,
    BlockPlan,
    Generators,
    banned_token_mask,
    check_threshold_remasking,
    confidence_scores,
    defer_tokens,
    gumbel_max_sample,
    plan_blocks,
    select_above_threshold,
    select_top_k,
    top_p_filter,
    transfer_counts,
)
from profiling import nvtx


@dataclass
class StepInfo:
    """Handed to `on_step` after every denoising step. `canvas` is the live (B, L) canvas:
    copy it to keep it."""

    step: int
    block: int
    canvas: torch.Tensor
    committed: int


@dataclass
class GenerationResult:
    """tokens: (B, prompt_length + gen_length), no mask left. generated_lengths: (B,) tokens
    of each row's generated span to keep (cut before the first EOS under `stop_at_eos`).
    nfe: denoiser forward passes; committed_per_step: tokens committed over the batch per step."""

    tokens: torch.Tensor
    prompt_length: int
    generated_lengths: torch.Tensor
    nfe: int
    blocks: list[BlockPlan]
    committed_per_step: list[int] = field(default_factory=list)

    @property
    def gen_length(self) -> int:
        return self.tokens.shape[1] - self.prompt_length

    @property
    def tokens_per_forward(self) -> float:
        """Generated tokens per sequence per forward pass (1.0 for one token per step)."""
        return self.gen_length / max(self.nfe, 1)

    def generated(self) -> list[list[int]]:
        """Each row's generated ids, cut to its `generated_lengths`."""
        start = self.prompt_length
        return [row[start:start + int(n)].tolist() for row, n in zip(self.tokens, self.generated_lengths)]


def _check_arguments(model: nn.Module, prompt_ids: torch.Tensor, *, gen_length: int, temperature: float,
                     top_p: float | None, remasking: str, cfg_scale: float, mask_id: int,
                     eos_token_id: int | None, logits_eos_inf: bool, kv_cache: str,
                     threshold: float | None, attention_mask: torch.Tensor | None) -> None:
    config = model.config
    if remasking not in REMASKING_STRATEGIES:
        raise InputError(f"inference.remasking: unknown strategy {remasking!r} (use one of {', '.join(REMASKING_STRATEGIES)})")
    if kv_cache not in KV_CACHE_MODES:
        raise InputError(f"inference.kv_cache: unknown mode {kv_cache!r} (use one of {', '.join(KV_CACHE_MODES)})")
    if temperature < 0:
        raise InputError(f"inference.temperature must be >= 0 (got {temperature})")
    if top_p is not None and not 0 < top_p <= 1:
        raise InputError(f"inference.top_p must be in (0, 1] (got {top_p})")
    if threshold is not None and not 0 < threshold <= 1:
        raise InputError(f"inference.threshold must be in (0, 1] (got {threshold})")
    check_threshold_remasking(threshold, remasking)
    if cfg_scale < 0:
        raise InputError(f"inference.cfg_scale must be >= 0 (got {cfg_scale})")
    if not 0 <= mask_id < config.vocab_size:
        raise InputError(f"inference.mask_id ({mask_id}) is outside the model vocabulary (0..{config.vocab_size - 1})")
    if logits_eos_inf and eos_token_id is None:
        raise InputError("inference.logits_eos_inf needs an eos_token_id")
    if config.causal:
        raise InputError("the model is causal (the autoregressive baseline); diffusion sampling needs a bidirectional model")
    total = prompt_ids.shape[1] + gen_length
    if total > config.context_length:
        raise InputError(f"prompt ({prompt_ids.shape[1]} tokens) + gen_length ({gen_length}) = {total} exceeds the "
                         f"model's context_length ({config.context_length})")
    real = prompt_ids if attention_mask is None else prompt_ids.masked_fill(~attention_mask.bool(), -1)
    if (real == mask_id).any():
        raise InputError(f"the prompt contains the mask token (id {mask_id}); prompts must be plain text")


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    *,
    steps: int,
    gen_length: int,
    block_length: int,
    mask_id: int,
    temperature: float = 0.0,
    top_p: float | None = None,
    remasking: str = "low_confidence",
    cfg_scale: float = 0.0,
    eos_token_id: int | None = None,
    eot_token_id: int | None = None,
    logits_eos_inf: bool = False,
    confidence_eos_eot_inf: bool = False,
    stop_at_eos: bool = False,
    attention_mask: torch.Tensor | None = None,
    generator: Generators = None,
    vocab_limit: int | None = None,
    kv_cache: str = "none",
    threshold: float | None = None,
    cache_refresh_every: int | None = None,
    compile: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
) -> GenerationResult:
    """Sample `gen_length` tokens after each prompt of `prompt_ids` (B, Lp) (or (Lp,)).

    steps: total denoising steps, shared over the blocks in proportion to their length (see
    `plan_blocks`; the last block is shorter when `block_length` does not divide `gen_length`).
    With `threshold`, each block instead runs until it is full (at least one token per step),
    but `steps` must still cover one step per block.
    attention_mask: (B, Lp) bool for left-padded batches, True on real tokens; RoPE positions
    then start at each row's first real token, so a padded row decodes like its prompt alone.
    generator: one for the batch, or one per row (each row's text then depends on its own seed
    only, whatever else is in the batch).
    vocab_limit: the tokenizer's size; ids at or above it (embedding padding) are never sampled.
    kv_cache / threshold: Fast-dLLM's caches and parallel decoding (see cache.py).
    cache_refresh_every / compile: the cache's refresh interval inside a block and compiled
    fixed-shape forwards (see `BlockDenoiser`).
    """
    if prompt_ids.dim() == 1:
        prompt_ids = prompt_ids[None]
        attention_mask = None if attention_mask is None else attention_mask[None]
    _check_arguments(model, prompt_ids, gen_length=gen_length, temperature=temperature, top_p=top_p,
                     remasking=remasking, cfg_scale=cfg_scale, mask_id=mask_id, eos_token_id=eos_token_id,
                     logits_eos_inf=logits_eos_inf, kv_cache=kv_cache, threshold=threshold,
                     attention_mask=attention_mask)
    batch, prompt_length = prompt_ids.shape
    plan = plan_blocks(prompt_length, gen_length, block_length, steps)
    device = prompt_ids.device

    canvas = torch.cat([prompt_ids, prompt_ids.new_full((batch, gen_length), mask_id)], dim=1)
    prompt_mask = torch.zeros_like(canvas, dtype=torch.bool)
    positions = None
    if attention_mask is None:
        prompt_mask[:, :prompt_length] = True
    else:
        prompt_mask[:, :prompt_length] = attention_mask.bool()
        attention_mask = torch.cat([attention_mask.bool(), attention_mask.new_ones((batch, gen_length), dtype=torch.bool)], 1)
        positions = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)

    banned = banned_token_mask(model.config.vocab_size, mask_id=mask_id, vocab_limit=vocab_limit,
                               banned_ids=(eos_token_id,) if logits_eos_inf else (), device=device)
    deferred = tuple(i for i in (eos_token_id, eot_token_id) if i is not None) if confidence_eos_eot_inf else ()
    denoiser = BlockDenoiser(model, kv_cache=kv_cache, cfg_scale=cfg_scale, mask_id=mask_id, prompt_mask=prompt_mask,
                             attention_mask=attention_mask, positions=positions, refresh_every=cache_refresh_every,
                             compile=compile)
    committed: list[torch.Tensor] = []  # per step, kept on the device: reading each would sync

    def denoise_step(block_index: int, window: torch.Tensor, select: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> None:
        """One forward pass, sample the block, commit the positions `select` picks."""
        with nvtx.range("sample_step"):
            logits = denoiser(canvas).masked_fill(banned, float("-inf"))
            if top_p is not None and temperature > 0:
                logits = top_p_filter(logits, top_p, temperature)
            sampled = gumbel_max_sample(logits, temperature, generator)
            confidence = defer_tokens(confidence_scores(logits, sampled, remasking, generator), sampled, deferred)
            commit = select(confidence, window == mask_id)
            window[commit] = sampled[commit]
            committed.append(commit.sum())
        if on_step is not None:
            on_step(StepInfo(len(committed), block_index, canvas, int(committed[-1])))

    for block_index, block in enumerate(plan):
        denoiser.start_block(block.start, block.end)
        window = canvas[:, block.start:block.end]  # a view: writing it writes the canvas
        with nvtx.range("sample_block", nvtx.COARSE):
            if threshold is None:
                # The schedule fixes how many tokens each step commits, and they add up to the
                # block: the step count is known, so no step asks the device whether masks remain.
                for count in transfer_counts(block.length, block.steps):
                    denoise_step(block_index, window, lambda conf, eligible, k=count: select_top_k(conf, eligible, k))
            else:
                while (window == mask_id).any():
                    denoise_step(block_index, window,
                                 lambda conf, eligible: select_above_threshold(conf, eligible, threshold))
        if stop_at_eos and eos_token_id is not None and _every_row_has(canvas[:, prompt_length:block.end], eos_token_id):
            canvas[:, block.end:] = eos_token_id  # the rest would be cut anyway: skip its forward passes
            break

    lengths = torch.full((batch,), gen_length, dtype=torch.long, device=device)
    if stop_at_eos and eos_token_id is not None:
        is_eos = canvas[:, prompt_length:] == eos_token_id
        lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), lengths)
    committed_per_step = torch.stack(committed).tolist() if committed else []
    return GenerationResult(tokens=canvas, prompt_length=prompt_length, generated_lengths=lengths,
                            nfe=denoiser.nfe, blocks=plan, committed_per_step=committed_per_step)


def _every_row_has(tokens: torch.Tensor, token_id: int) -> bool:
    return bool((tokens == token_id).any(dim=1).all())
