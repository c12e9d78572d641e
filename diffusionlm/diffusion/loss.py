"""Training objectives: the masked-diffusion loss (LLaDA / MDLM) and the autoregressive baseline.

The diffusion loss is the Monte-Carlo estimate of the negative ELBO bound of LLaDA (eq. 3):

    loss = 1 / (B * L) * sum_{b, i masked} CE(model(x_t)_{b,i}, x0_{b,i}) / p_mask_b

Because every token is masked with probability p_mask, E[1{masked} / p_mask] = 1 and the
estimate is unbiased for the average per-token cross-entropy integrated over noise levels.

`weighting = "masked_mean"` replaces 1 / (p_mask * L) by 1 / (number of masked tokens in the
row): the self-normalised form of the same integral. With t ~ U(0, 1) the masked count is
uniform on {0, ..., L}, so the row average is LLaDA's discrete-time form of the bound
(eq. 6: the mean cross-entropy of l masked tokens, l uniform), up to the empty row's 1/(L+1).
A row with few masked tokens then weighs as much as any other instead of carrying a 1/p_mask
factor that can reach 1/eps, which lowers the variance of the gradient.

`mask_rate_floor` and `mask_rate_ceiling` draw t from U[floor, ceiling) instead of U[0, 1):
training leaves out the lowest masking rates, whose rows carry the fewest masked tokens, and
the highest, where almost nothing is left to condition on and the best prediction is little
more than the corpus's token frequencies. They change what is trained, not how a model is
scored: evaluation (`diffusionlm.diffusion.elbo`) integrates over the full range.

Only the masked positions go through the LM head: the unmasked ones carry no loss, and the
(tokens x vocab) logits are the largest activation of the model, so materialising them for
every position would waste most of the head's FLOPs and memory. The rows are gathered at a
fixed capacity (the masked count rounded up, see `head_positions`) rather than by
`nonzero`, so a compiled model sees no data-dependent shape and training never waits for
the device to count masks. The cross-entropy is computed in float32 whatever the autocast dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from config.schemas import LossWeighting
from diffusionlm.diffusion.forward_process import (
    NoiseGenerators,
    draw_training_masks,
    host_to_device,
    random_truncate,
    sample_times,
)

# The LM head's row count is a multiple of this: tensor-core friendly, and it keeps 0 and 1
# (which torch.compile specialises on) out of the shapes it sees.
HEAD_ROWS_MULTIPLE = 8


@dataclass
class DiffusionLoss:
    """One loss evaluation. `loss` carries the graph; the rest is detached, for logging.

    num_masked and num_tokens (B * L after any truncation) are known on the host, where the
    masked counts were drawn; mask_ratio is filled from them as a device scalar, so the loop
    reduces it with the loss and reading neither costs a device sync.
    """

    loss: torch.Tensor
    mask_ratio: torch.Tensor
    num_masked: int
    num_tokens: int


def head_positions(is_masked: torch.Tensor, num_masked: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the positions to score: the masked ones in row-major order, then
    unmasked padding positions up to a capacity of num_masked rounded up to HEAD_ROWS_MULTIPLE
    (at most B * L).

    A stable sort puts masked positions first; the capacity is an exact upper bound because
    the caller knows num_masked, so no masked token is ever dropped.
    """
    length = is_masked.shape[1]
    capacity = min(-(-max(num_masked, 1) // HEAD_ROWS_MULTIPLE) * HEAD_ROWS_MULTIPLE, is_masked.numel())
    order = torch.argsort(~is_masked.flatten(), stable=True)[:capacity]
    return order // length, order % length


def masked_token_cross_entropy(model: nn.Module, x0: torch.Tensor, noisy: torch.Tensor, is_masked: torch.Tensor,
                               num_masked: int | None = None
                               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """float32 cross-entropy of each scored position of x0 given the noisy canvas, and the
    (row, column) indices of those positions (`head_positions`): the masked tokens, then
    padding rows whose cross-entropy is exactly 0.

    The one place the denoiser is scored: the training loss, validation and the ELBO
    estimators all go through it. Only these positions reach the LM head, through the
    model's own `forward` so that data-parallel wrappers see the call. num_masked
    (is_masked.sum()) is counted here, with one host sync, unless the caller knows it.
    """
    if num_masked is None:
        num_masked = int(is_masked.sum())
    positions = head_positions(is_masked, num_masked)
    logits = model(noisy, positions_to_score=positions)
    token_ce = F.cross_entropy(logits.float(), x0[positions], reduction="none")
    is_padding = torch.arange(token_ce.shape[0], device=token_ce.device) >= num_masked
    return token_ce.masked_fill(is_padding, 0.0), positions


def masked_token_loss(model: nn.Module, x0: torch.Tensor, noisy: torch.Tensor, is_masked: torch.Tensor,
                      p_mask: torch.Tensor, *, answer_lengths: torch.Tensor | None = None,
                      weighting: LossWeighting = "elbo", num_masked: int | None = None) -> torch.Tensor:
    """The estimator for one fixed noise draw (deterministic given its inputs).

    x0, noisy, is_masked: (B, L); p_mask: (B,) per sequence or broadcastable to (B, L).
    weighting "elbo", pre-training (answer_lengths None): sum over masked tokens of CE / p_mask,
    divided by B * L. SFT (answer_lengths (B,)): each sequence's sum is divided by its own answer
    length instead of L (LLaDA's SFT objective, Sec. 2.3), then averaged over the batch, so long
    and short answers weigh the same per token of their own. An empty answer counts as length 1.
    weighting "masked_mean": each sequence's masked cross-entropies are averaged (prompt tokens
    are never masked, so in SFT this is the mean over masked answer tokens), then averaged over
    the batch; a row with nothing masked contributes 0.

    With no masked token at all the result is an exact 0 that still backpropagates (zero
    gradients), so gradient accumulation and DDP see every parameter every step.
    """
    batch_size, length = x0.shape
    if weighting == "masked_mean":
        row_normaliser = is_masked.sum(dim=1, keepdim=True).clamp(min=1).float()
    else:
        p_mask = p_mask[:, None] if p_mask.ndim == 1 else p_mask
        if answer_lengths is None:
            per_sequence_norm = torch.full((batch_size, 1), float(length), device=x0.device)
        else:
            per_sequence_norm = answer_lengths.to(device=x0.device, dtype=torch.float32).clamp(min=1)[:, None]
        row_normaliser = p_mask * per_sequence_norm
    token_weight = (1.0 / row_normaliser).expand(batch_size, length)

    token_ce, scored = masked_token_cross_entropy(model, x0, noisy, is_masked, num_masked)
    return (token_ce * token_weight[scored]).sum() / batch_size


def diffusion_loss(model: nn.Module, x0: torch.Tensor, *, mask_token_id: int, noise_epsilon: float,
                   random_trunc_prob: float = 0.0, antithetic: bool = False,
                   mask_rate_floor: float = 0.0, mask_rate_ceiling: float = 1.0, weighting: LossWeighting = "elbo",
                   prompt_lengths: torch.Tensor | None = None,
                   generator: NoiseGenerators | torch.Generator | None = None) -> DiffusionLoss:
    """Noise a clean batch x0 (B, L) with a fresh draw and return the masked-diffusion loss.

    mask_rate_floor, mask_rate_ceiling and weighting: see the module docstring (the defaults are
    LLaDA's estimator; 0 <= floor < ceiling <= 1).
    prompt_lengths: (B,) host ints for SFT. The first prompt_lengths[b] tokens of row b are
    the prompt: never masked, no loss, and the row's loss is normalised by its answer length.
    Random truncation is a pre-training trick and would cut answers away, so it cannot be
    combined with SFT. generator: the run's `NoiseGenerators`, or one CPU generator for both
    streams. Nothing here waits for the device.
    """
    if not 0.0 <= mask_rate_floor < mask_rate_ceiling <= 1.0:
        raise ValueError(f"need 0 <= mask_rate_floor < mask_rate_ceiling <= 1, "
                         f"got {mask_rate_floor} and {mask_rate_ceiling}")
    if prompt_lengths is not None and random_trunc_prob > 0:
        raise ValueError("random_trunc_prob must be 0 in SFT mode (prompt_lengths given): truncation would cut answers")
    generators = NoiseGenerators.of(generator)
    x0 = random_truncate(x0, random_trunc_prob, generators.host)
    batch_size, length = x0.shape
    t = sample_times(batch_size, antithetic=antithetic, generator=generators.host, device="cpu")
    t = mask_rate_floor + (mask_rate_ceiling - mask_rate_floor) * t  # exactly t for LLaDA's [0, 1)
    answer_lengths = None
    if prompt_lengths is not None:
        prompt_lengths = prompt_lengths.cpu()
        answer_lengths = host_to_device(length - prompt_lengths, x0.device)
    draw = draw_training_masks(x0, t, noise_epsilon, mask_token_id, generators=generators,
                               prompt_lengths=prompt_lengths)
    noisy, is_masked = draw.noisy, draw.is_masked

    loss = masked_token_loss(model, x0, noisy, is_masked, draw.p_mask, answer_lengths=answer_lengths,
                             num_masked=draw.num_masked, weighting=weighting)
    num_tokens = batch_size * length
    return DiffusionLoss(loss=loss, mask_ratio=torch.full((), draw.num_masked / num_tokens, device=x0.device),
                         num_masked=draw.num_masked, num_tokens=num_tokens)


def next_token_cross_entropy(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float32 (B, L-1): -log p(x_i | x_<i) for every token after the first, from a causal model."""
    logits = model(x[:, :-1])
    return F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten(), reduction="none").view(x.shape[0], -1)


def autoregressive_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal model on x (B, L): predict x[:, 1:] from x[:, :-1].

    The baseline for `[model].causal = true`, trained by the same stack for honest comparisons.
    """
    return next_token_cross_entropy(model, x).mean()
