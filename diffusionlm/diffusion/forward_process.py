"""The masked-diffusion forward (noising) process of LLaDA / MDLM.

A clean sequence x0 is corrupted by drawing a time t ~ U(0, 1) per sequence and replacing
each token independently by `<|mask|>` with probability p_mask = (1 - eps) * t + eps. The
floor eps keeps 1/p_mask (the loss weight) bounded. Training, validation on fixed noise
draws, ELBO evaluation and sampling all noise sequences through these functions, so there
is exactly one definition of the process.

Random draws take an optional `torch.Generator` and are made on the generator's device
(or on the data's device when none is given), so a run seeded with a CPU generator draws
the same noise whatever device the model lives on.

Training draws its masks in two stages (`draw_training_masks`): the host (CPU) draws each
sequence's time and how many of its tokens are masked (a binomial count), the device draws
which tokens. That is the same distribution as masking every token independently, and it
tells the host how many masked rows the LM head will see without waiting for the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class NoiseGenerators:
    """A training run's two noise streams.

    host (a CPU generator): truncation, per-sequence times and per-sequence mask counts, the
    draws that decide shapes, so they never need a device sync. device (on the model's
    device): the per-token draw that picks which positions are masked, made where it is used
    instead of being copied every micro-step. On a CPU run both are the same generator.
    """

    host: torch.Generator | None
    device: torch.Generator | None

    @classmethod
    def seeded(cls, seed: int, device: torch.device) -> NoiseGenerators:
        host = torch.Generator().manual_seed(seed)
        if device.type == "cpu":
            return cls(host, host)
        return cls(host, torch.Generator(device=device).manual_seed(seed))

    @classmethod
    def of(cls, generator: NoiseGenerators | torch.Generator | None) -> NoiseGenerators:
        """One CPU generator (or None, the default generators) serves as both streams."""
        if isinstance(generator, NoiseGenerators):
            return generator
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"a single noise generator must be a CPU generator (it decides shapes on the host), "
                             f"got one on {generator.device}; pass NoiseGenerators(host, device)")
        return cls(generator, generator)


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to `device` without blocking: pinned first when the target is CUDA
    (a copy from pageable memory would wait for the device)."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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


def mask_exact_count(shape: tuple[int, int], counts: torch.Tensor, generator: torch.Generator | None,
                     device: torch.device, protected: torch.Tensor | None = None) -> torch.Tensor:
    """(B, L) bool with exactly counts[b] True entries in row b, at uniformly random positions
    (among the unprotected ones when `protected`, a (B, L) bool, is given).

    The positions are the counts[b] smallest of L uniform keys; protected keys are pushed
    above every unprotected one. Ranks come from a double argsort, so ties cannot change a count.
    """
    keys = _uniform(tuple(shape), generator, device)
    if protected is not None:
        keys = keys + protected
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < counts.to(device)[:, None]


@dataclass
class TrainingMasks:
    """One training draw: noisy ids and masks on the device, plus the host-side numbers."""

    noisy: torch.Tensor
    is_masked: torch.Tensor
    p_mask: torch.Tensor  # (B,) on the device
    num_masked: int  # known on the host, without a device sync


def draw_training_masks(x0: torch.Tensor, t: torch.Tensor, noise_epsilon: float, mask_token_id: int, *,
                        generators: NoiseGenerators, prompt_lengths: torch.Tensor | None = None) -> TrainingMasks:
    """Mask x0 (B, L) at the times t (B,), a host tensor, drawing from `generators`.

    Masking each maskable token independently with probability p is the same distribution as
    drawing the row's count k ~ Binomial(n, p) and then masking a uniformly random k-subset,
    so the loss estimator is unchanged (still unbiased); the host draws k, so the number of
    masked tokens is known without reading the device. prompt_lengths: (B,) host ints for
    SFT; those first tokens of a row are never masked.
    """
    batch_size, length = x0.shape
    p_mask = mask_probability(t, noise_epsilon)
    maskable = torch.full((batch_size,), length) if prompt_lengths is None else length - prompt_lengths
    counts = torch.binomial(maskable.double(), p_mask.double(), generator=generators.host).long()
    protected = None
    if prompt_lengths is not None:
        protected = torch.arange(length, device=x0.device)[None, :] < host_to_device(prompt_lengths, x0.device)[:, None]
    is_masked = mask_exact_count((batch_size, length), host_to_device(counts, x0.device), generators.device,
                                 x0.device, protected)
    noisy = torch.where(is_masked, torch.full_like(x0, mask_token_id), x0)
    return TrainingMasks(noisy=noisy, is_masked=is_masked, p_mask=host_to_device(p_mask, x0.device),
                         num_masked=int(counts.sum()))


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
