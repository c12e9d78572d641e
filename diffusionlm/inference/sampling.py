"""The per-step pieces of the masked-diffusion sampler: which ids may be produced, how a token
is drawn, how confident the sampler is in it, and how many tokens each step commits.

Everything here is a pure function of its inputs (plus an optional `torch.Generator`), so the
sampler in `generate.py` reads as the LLaDA loop and each rule can be tested on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import torch

from config.schemas import RemaskingStrategy
from diffusionlm.errors import InputError

REMASKING_STRATEGIES = get_args(RemaskingStrategy)

# One generator for the whole batch, or one per row (so each row's draws depend on its own
# seed only, and a row samples the same text batched or alone).
Generators = torch.Generator | Sequence[torch.Generator] | None

# Confidence given to a sampled EOS/EOT when `confidence_eos_eot_inf` defers them: below every
# real score (probabilities, margins, negative entropies), yet above the -inf that marks
# positions which may not be committed at all, so a deferred token is still committed when
# nothing else is left in its block.
DEFERRED_CONFIDENCE = torch.finfo(torch.float64).min


@dataclass(frozen=True)
class BlockPlan:
    """One semi-autoregressive block: canvas positions [start, end) decoded in `steps` steps."""

    start: int
    end: int
    steps: int

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_blocks(prompt_length: int, gen_length: int, block_length: int, steps: int) -> list[BlockPlan]:
    """Split the generated span into blocks and the total step budget over them.

    Blocks are `block_length` long, left to right; when `block_length` does not divide
    `gen_length` the last block is shorter and takes the remainder. Steps are shared in
    proportion to block length: block b gets floor(S * e_b / G) - floor(S * s_b / G) steps
    (s_b, e_b its span inside the G generated tokens), which sums to S, gives every block at
    least one step when S >= number of blocks, and is LLaDA's `steps // num_blocks` whenever
    the blocks are equal and S divides evenly. A block never gets more steps than tokens:
    extra steps would commit nothing and only cost forward passes.
    """
    if gen_length <= 0:
        raise InputError(f"gen_length must be positive (got {gen_length}); the prompt leaves no room to generate")
    if block_length <= 0:
        raise InputError(f"inference.block_length must be positive (got {block_length})")
    if steps <= 0:
        raise InputError(f"inference.steps must be positive (got {steps})")
    num_blocks = math.ceil(gen_length / block_length)
    if steps < num_blocks:
        raise InputError(f"inference.steps ({steps}) is fewer than the number of blocks ({num_blocks} = "
                         f"ceil({gen_length} generated tokens / block_length {block_length})); every block needs a step")
    plans = []
    for b in range(num_blocks):
        lo, hi = b * block_length, min((b + 1) * block_length, gen_length)
        block_steps = steps * hi // gen_length - steps * lo // gen_length
        plans.append(BlockPlan(prompt_length + lo, prompt_length + hi, min(block_steps, hi - lo)))
    return plans


def transfer_counts(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each of `steps` steps: an even split, the remainder to the earliest.

    LLaDA's linear schedule removes the same expected number of masks per step of the reverse
    process; with integers that is floor(n / steps), plus one for the first n % steps steps.
    """
    base, remainder = divmod(num_masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def banned_token_mask(vocab_size: int, *, mask_id: int, vocab_limit: int | None, banned_ids: tuple[int, ...] = (),
                      device: torch.device | str | None = None) -> torch.Tensor:
    """(V,) bool, True for ids the sampler must never produce.

    The mask id (the model would "predict" a mask), ids at or above `vocab_limit` (rows of an
    embedding padded beyond the tokenizer: they decode to nothing) and any extra `banned_ids`
    (EOS under `logits_eos_inf`).
    """
    banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    banned[mask_id] = True
    if vocab_limit is not None:
        banned[vocab_limit:] = True
    for token_id in banned_ids:
        banned[token_id] = True
    return banned


def top_p_filter(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> torch.Tensor:
    """Keep the nucleus: the smallest set of most likely ids whose probability under
    softmax(logits / temperature) (the distribution actually sampled) reaches `top_p`.

    Ids outside it get -inf. The id that crosses `top_p` is kept, so the nucleus is never empty.
    """
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def uniform(shape: tuple[int, ...], generator: Generators, device: torch.device) -> torch.Tensor:
    """float64 U[0, 1) draws made on the generator's device (so a seed means the same draws
    wherever the model lives), returned on `device`.

    With a sequence of generators, row i of the (B, ...) draws comes from generator i alone.
    One generator for a single row gives the same draws either way.
    """
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]} rows")
        return torch.stack([uniform(shape[1:], row, device) for row in generator])
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float64).to(device)


def gumbel_max_sample(logits: torch.Tensor, temperature: float, generator: Generators = None) -> torch.Tensor:
    """Draw ids from softmax(logits / T) by the Gumbel-max trick; T = 0 is argmax.

    LLaDA writes it as argmax exp(l) / (-log u)^T; we take the log of that expression,
    l - T * log(-log u), which has the same argmax and cannot overflow exp(). The noise is
    float64 because with float32 (or bf16) uniforms the Gumbel tail is truncated and coarsely
    quantised, which quietly lowers the effective temperature: arXiv:2409.02908 shows
    low-precision Gumbel-max flatters perplexity while hurting generation quality.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    u = uniform(tuple(logits.shape), generator, logits.device)
    return (logits.double() - temperature * torch.log(-torch.log(u))).argmax(dim=-1)


def confidence_scores(logits: torch.Tensor, sampled: torch.Tensor, remasking: str,
                      generator: Generators = None) -> torch.Tensor:
    """float64 (B, L) score per position: the higher, the sooner the sampled token is committed.

    low_confidence: probability of the sampled token (LLaDA). random: U[0, 1) (LLaDA).
    margin: top-1 minus top-2 probability. entropy: negative entropy of the distribution.
    Probabilities come from softmax(logits) at temperature 1, as in LLaDA.
    """
    if remasking == "random":
        return uniform(tuple(sampled.shape), generator, sampled.device)
    probs = torch.softmax(logits.double(), dim=-1)
    if remasking == "low_confidence":
        return probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    if remasking == "margin":
        top2 = probs.topk(2, dim=-1).values
        return top2[..., 0] - top2[..., 1]
    if remasking == "entropy":
        return torch.where(probs > 0, probs * probs.log(), torch.zeros_like(probs)).sum(dim=-1)
    raise InputError(f"inference.remasking: unknown strategy {remasking!r} (use one of {', '.join(REMASKING_STRATEGIES)})")


def check_threshold_remasking(threshold: float | None, remasking: str) -> None:
    """Threshold decoding commits tokens whose confidence reaches `threshold` in (0, 1]; entropy
    scores (negative entropies, always <= 0) never do, so that pairing would decode nothing."""
    if threshold is not None and remasking == "entropy":
        raise InputError("inference.threshold needs a confidence in [0, 1]: remasking 'entropy' scores are negative "
                         "entropies, which never reach it (use low_confidence or margin)")


def defer_tokens(confidence: torch.Tensor, sampled: torch.Tensor, token_ids: tuple[int, ...]) -> torch.Tensor:
    """Lowest confidence for positions whose sampled token is one of `token_ids` (EOS and EOT
    under `confidence_eos_eot_inf`), so they are committed only once nothing else is left."""
    if not token_ids:
        return confidence
    deferred = torch.isin(sampled, torch.tensor(token_ids, device=sampled.device))
    return confidence.masked_fill(deferred, DEFERRED_CONFIDENCE)


def select_top_k(confidence: torch.Tensor, eligible: torch.Tensor, k: int) -> torch.Tensor:
    """(B, L) bool: the k most confident eligible positions of each row (every row has >= k)."""
    scores = confidence.masked_fill(~eligible, float("-inf"))
    chosen = torch.zeros_like(eligible)
    if k > 0:
        chosen.scatter_(-1, scores.topk(k, dim=-1).indices, True)
    return chosen


def select_above_threshold(confidence: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, L) bool: every eligible position with confidence >= threshold, and at least the most
    confident one in each row that still has an eligible position (Fast-dLLM parallel decoding)."""
    scores = confidence.masked_fill(~eligible, float("-inf"))
    chosen = eligible & (scores >= threshold)
    best = torch.zeros_like(eligible).scatter_(-1, scores.argmax(dim=-1, keepdim=True), True)
    return chosen | (best & eligible)
