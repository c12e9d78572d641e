"""The masked-diffusion forward (noising) process of LLaDA / MDLM.

A clean sequence x0 is corrupted by drawing a time t ~ U(0, 1) per sequence and replacing
each token independently by `<|mask|>` with probability p_mask = (1 - eps) * t + eps. The
floor eps keeps 1/p_mask (the loss weight) bounded. Training, validation on fixed noise
draws, ELBO evaluation and sampling all noise sequences through these functions, so there
is exactly one definition of the process.

Random draws take an optional `torch.Generator` and are made on the generator's device
(or on the data's device when none is given), so a run seeded with a CPU generator draws
the same noise whatever device the model lives on.
"""

from __future__ import annotations

import torch


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None,
             device: torch.device | str | None) -> torch.Tensor:
    """U[0, 1) draws made on the generator's device, returned on `device`."""
    draw_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=draw_device).to(device)


def sample_times(batch_size: int, *, antithetic: bool, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Diffusion times t in [0, 1), one per sequence, shape (batch_size,).

    antithetic=False: i.i.d. uniform. antithetic=True: stratified across the batch,
    t_i = (u + i / B) mod 1 with one shared u ~ U(0, 1) (the low-discrepancy sampler of
    Kingma et al., 2021, used by MDLM). Each t_i is still marginally uniform, so the loss
    stays unbiased, but the batch covers [0, 1) evenly and the loss variance drops.
    """
    if not antithetic:
        return _uniform((batch_size,), generator, device)
    offset = _uniform((1,), generator, device)
    strata = torch.arange(batch_size, device=offset.device, dtype=offset.dtype) / batch_size
    return (offset + strata) % 1.0


def mask_probability(t: torch.Tensor, noise_epsilon: float) -> torch.Tensor:
    """p_mask = (1 - eps) * t + eps: the linear schedule of LLaDA, floored at eps so that the
    loss weight 1 / p_mask never exceeds 1 / eps."""
    return (1.0 - noise_epsilon) * t + noise_epsilon


def apply_mask(x0: torch.Tensor, p_mask: torch.Tensor, mask_token_id: int, *,
               generator: torch.Generator | None = None,
               protected: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each token of x0 (B, L) independently with its row's probability.

    p_mask: (B,) one probability per sequence, or anything broadcastable to (B, L).
    protected: optional (B, L) bool; True positions (e.g. SFT prompt tokens) are never masked.
    Returns (noisy ids, is_masked bool), both (B, L).
    """
    if p_mask.ndim == 1:
        p_mask = p_mask[:, None]
    is_masked = _uniform(tuple(x0.shape), generator, x0.device) < p_mask
    if protected is not None:
        is_masked &= ~protected
    noisy = torch.where(is_masked, torch.full_like(x0, mask_token_id), x0)
    return noisy, is_masked


def random_truncate(x0: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """With probability `prob`, cut the whole batch to a random length in [1, L].

    LLaDA trains 1% of pre-training batches on shorter sequences so the model also sees
    variable-length inputs. The cut is shared by the batch (it stays rectangular). When prob
    is 0 nothing is drawn, so the random stream is the same as without this option.
    """
    if prob <= 0:
        return x0
    length = x0.shape[1]
    draw_device = generator.device if generator is not None else None
    coin, cut = torch.rand(2, generator=generator, device=draw_device).tolist()
    if coin >= prob:
        return x0
    return x0[:, : 1 + int(cut * length)]
