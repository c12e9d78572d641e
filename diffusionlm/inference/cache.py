"""Key/value caching for the block sampler (Fast-dLLM, Wu et al. 2025).

A bidirectional denoiser has no exact KV cache: every key depends on the whole canvas, and
the canvas changes at every step. Fast-dLLM observes that inside one semi-autoregressive block
the keys and values *outside* the block barely move, so it reuses them:

- prefix cache: at the first step of a block, one full forward records every layer's keys and
  values; the following steps of the block recompute only the block and everything to its
  right, attending to the recorded keys of everything to its left.
- dual cache: the same, but the suffix (the still-masked blocks to the right) is reused too, so
  a step recomputes only the current block.

The caches are refreshed at each block boundary (the first step of every block is a full
forward). Both are approximations of the uncached sampler; with `kv_cache = "none"` the
denoiser below runs the plain full forward at every step.
"""

from __future__ import annotations

from typing import get_args

import torch
from torch import nn

from config.schemas import KVCacheMode
from diffusionlm.diffusion.guidance import guide, mask_prompt
from profiling import nvtx

KV_CACHE_MODES = get_args(KVCacheMode)


class LayerKV:
    """One layer's keys and values for the whole canvas, each (B, H, L, head_dim).

    Follows the protocol of `SelfAttention`: `update(k, v)` receives this forward's keys and
    values and returns the ones to attend to. When recording, they are stored as they are;
    otherwise they overwrite the stored ones from `write_at` on (the positions this forward
    recomputed) and the whole stored canvas is returned.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.write_at: int | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.write_at is None:
            self.keys, self.values = k.contiguous(), v.contiguous()
            return k, v
        end = self.write_at + k.shape[2]
        self.keys[:, :, self.write_at:end] = k
        self.values[:, :, self.write_at:end] = v
        return self.keys, self.values


class KVCache:
    """Per-layer caches of a canvas. `record()` before a full forward, `write_from(start)`
    before a forward of the slice starting at canvas position `start`."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(num_layers)]

    def record(self) -> None:
        for layer in self.layers:
            layer.write_at = None

    def write_from(self, start: int) -> None:
        for layer in self.layers:
            layer.write_at = start


class BlockDenoiser:
    """Logits for the current block's positions, computed as `kv_cache` says, with CFG.

    canvas: (B, L) ids; `prompt_mask` (B, L) marks real prompt tokens (masked out in the
    unconditional copy of classifier-free guidance); `attention_mask` (B, L) or None marks
    left padding; `positions` (B, L) or None are the RoPE positions.

    With guidance the conditional and unconditional canvases go through the model as one
    doubled batch and are combined as un + (w + 1) * (cond - un); that is one forward pass,
    and the cache simply holds both halves. `nfe` counts forward passes. `kv_cache` is one of
    `KV_CACHE_MODES`; `generate` checks it, with the other sampling arguments, before any work.
    """

    def __init__(self, model: nn.Module, *, kv_cache: str, cfg_scale: float, mask_id: int,
                 prompt_mask: torch.Tensor, attention_mask: torch.Tensor | None,
                 positions: torch.Tensor | None) -> None:
        self.model, self.mode, self.cfg_scale, self.mask_id = model, kv_cache, cfg_scale, mask_id
        self.prompt_mask = prompt_mask
        length = prompt_mask.shape[1]
        if positions is None:
            positions = torch.arange(length, device=prompt_mask.device)
        guided = cfg_scale > 0
        self.attention_mask = _double(attention_mask) if guided else attention_mask
        self.positions = _double(positions) if guided and positions.dim() == 2 else positions
        self.cache = None if kv_cache == "none" else KVCache(len(model.blocks))
        self.nfe = 0
        self.start = self.end = 0
        self._refresh = True

    def start_block(self, start: int, end: int) -> None:
        """The next call decodes canvas positions [start, end) and refreshes the cache."""
        self.start, self.end = start, end
        self._refresh = True

    def __call__(self, canvas: torch.Tensor) -> torch.Tensor:
        """float32 (B, end - start, V) logits of the current block."""
        ids = canvas
        if self.cfg_scale > 0:
            ids = torch.cat([canvas, mask_prompt(canvas, self.prompt_mask, self.mask_id)])
        if self.cache is None or self._refresh:
            with nvtx.range("cache_refresh" if self.cache is not None else "forward"):
                if self.cache is not None:
                    self.cache.record()
                hidden = self.model.forward_hidden(ids, self.attention_mask, self.positions, kv_cache=self.cache)
            hidden = hidden[:, self.start:self.end]
            self._refresh = False
        else:
            stop = self.end if self.mode == "dual" else ids.shape[1]
            self.cache.write_from(self.start)
            positions = self.positions[..., self.start:stop]
            hidden = self.model.forward_hidden(ids[:, self.start:stop], self.attention_mask, positions,
                                               kv_cache=self.cache)
            hidden = hidden[:, : self.end - self.start]
        self.nfe += 1
        logits = self.model.lm_head(hidden).float()
        if self.cfg_scale > 0:
            logits = guide(*logits.chunk(2), self.cfg_scale)
        return logits


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else torch.cat([tensor, tensor])
