"""Optional diagnostics for logged metrics: activation and weight norms.

The norm diagnostics cost a device sync each time they are read, so they exist only when
their config switch is on: with `log_activation_norms = false` no hook is ever registered.
"""

from __future__ import annotations

import torch
from torch import nn


class ActivationNorms:
    """Forward hooks recording the RMS of each Transformer block's output.

    In training the last block returns only the positions the loss scores (see `Block`), so
    its RMS is over those positions.

    The values stay on the device as detached scalars; `read()` fetches them all with one sync.
    """

    def __init__(self, model: nn.Module) -> None:
        self._latest: dict[str, torch.Tensor] = {}
        self._handles = [block.register_forward_hook(self._recorder(f"activation_rms/block_{i}"))
                         for i, block in enumerate(model.blocks)]

    def _recorder(self, key: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            self._latest[key] = output.detach().float().pow(2).mean().sqrt()
        return hook

    def read(self) -> dict[str, float]:
        if not self._latest:
            return {}
        keys = list(self._latest)
        return dict(zip(keys, torch.stack([self._latest[k] for k in keys]).tolist()))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@torch.no_grad()
def weight_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of every parameter, keyed `weight_norm/<name>` (one device sync)."""
    names, params = zip(*model.named_parameters())
    norms = torch.stack([p.detach().float().norm() for p in params]).tolist()
    return {f"weight_norm/{name}": value for name, value in zip(names, norms)}
