"""Global gradient-norm clipping, written without per-parameter host syncs.

The norm of every gradient is computed by one foreach kernel, combined on the device, and
the scale factor is applied whether or not clipping is needed (clamped to 1), so nothing
waits for the GPU to decide whether to clip.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

CLIP_EPS = 1e-6


def _grads(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def _global_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = [n.to(device=device, dtype=torch.float32) for n in torch._foreach_norm(grads)]
    return torch.linalg.vector_norm(torch.stack(norms))


def clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale gradients in place so their global L2 norm is at most max_norm.

    Returns the norm before clipping (float32 tensor). Params without a grad (frozen, unused
    this step) are skipped; with no grads at all it returns 0 and touches nothing. Below the
    threshold the factor is exactly 1, so gradients are unchanged bit for bit.
    """
    grads = _grads(params)
    total_norm = _global_norm(grads)
    if grads:
        scale = (max_norm / (total_norm + CLIP_EPS)).clamp(max=1.0)
        torch._foreach_mul_(grads, scale.to(grads[0].dtype))
    return total_norm
