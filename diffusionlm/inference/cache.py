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
forward), and with `refresh_every = n` also every n steps inside a block. Both are
approximations of the uncached sampler; with `kv_cache = "none"` (or `refresh_every = 1`) the
denoiser below runs the plain full forward at every step.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
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
    values and returns the ones to attend to. When recording (`write_index` None) they are
    copied into the stored tensors as they are; otherwise they overwrite the stored positions
    `write_index` (the ones this forward recomputed) and the whole stored canvas is returned.
    The stored tensors are allocated once and then written in place, so their shapes and
    addresses stay fixed: a compiled step (or a CUDA graph) can keep using them.
    """

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.write_index: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.write_index is None:
            if self.keys is None or self.keys.shape != k.shape or self.keys.dtype != k.dtype:
                self.keys, self.values = torch.empty_like(k, memory_format=torch.contiguous_format), \
                    torch.empty_like(v, memory_format=torch.contiguous_format)
            self.keys.copy_(k)
            self.values.copy_(v)
            return k, v
        self.keys.index_copy_(2, self.write_index, k)
        self.values.index_copy_(2, self.write_index, v)
        return self.keys, self.values


class KVCache:
    """Per-layer caches of a canvas. `record()` before a full forward, `write_at(index)` before
    a forward of the canvas positions `index` (a 1-D LongTensor of consecutive positions)."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerKV() for _ in range(num_layers)]

    def record(self) -> None:
        for layer in self.layers:
            layer.write_index = None

    def write_at(self, index: torch.Tensor) -> None:
        for layer in self.layers:
            layer.write_index = index

    def mark_static(self) -> None:
        """Tell torch.compile that the stored tensors keep their addresses (CUDA graphs then
        capture the in-place writes instead of refusing a graph that mutates its inputs)."""
        for layer in self.layers:
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)


# One compiled forward per model and mode, kept for the model's lifetime: a fresh torch.compile
# wrapper per generation would recompile every time. The compiled function is the unbound
# method, so the cache holds no reference to the model and does not keep it alive.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward_hidden(model: nn.Module, device: torch.device) -> Callable[..., torch.Tensor]:
    """`model.forward_hidden` through torch.compile; on CUDA as CUDA graphs ("reduce-overhead"),
    which replay a whole decode step as one launch: the win at batch 1, where kernel launches,
    not arithmetic, bound a step."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    per_model = _COMPILED.setdefault(model, {})
    if mode not in per_model:
        per_model[mode] = torch.compile(type(model).forward_hidden, mode=mode)
    return functools.partial(per_model[mode], model)


class BlockDenoiser:
    """Logits for the current block's positions, computed as `kv_cache` says, with CFG.

    canvas: (B, L) ids; `prompt_mask` (B, L) marks real prompt tokens (masked out in the
    unconditional copy of classifier-free guidance); `attention_mask` (B, L) or None marks
    left padding; `positions` (B, L) or None are the RoPE positions.

    With guidance the conditional and unconditional canvases go through the model as one
    doubled batch and are combined as un + (w + 1) * (cond - un); that is one forward pass,
    and the cache simply holds both halves. `nfe` counts forward passes. `kv_cache` is one of
    `KV_CACHE_MODES`; `generate` checks it, with the other sampling arguments, before any work.

    refresh_every: with a cache, also run a full (recording) forward every this many steps
    inside a block, not only at its first step; 1 is the uncached sampler exactly.
    compile: run the forwards that have a fixed shape (the uncached full forward, the dual
    cache's block step) through torch.compile, as CUDA graphs on CUDA. Recording forwards stay
    eager: they run once per refresh and allocate the cache. The prefix cache's step shrinks
    block by block, so it is compiled with dynamic shapes.
    """

    def __init__(self, model: nn.Module, *, kv_cache: str, cfg_scale: float, mask_id: int,
                 prompt_mask: torch.Tensor, attention_mask: torch.Tensor | None,
                 positions: torch.Tensor | None, refresh_every: int | None = None, compile: bool = False) -> None:
        self.model, self.mode, self.cfg_scale, self.mask_id = model, kv_cache, cfg_scale, mask_id
        self.prompt_mask = prompt_mask
        length = prompt_mask.shape[1]
        if positions is None:
            positions = torch.arange(length, device=prompt_mask.device)
        guided = cfg_scale > 0
        self.attention_mask = _double(attention_mask) if guided else attention_mask
        self.positions = _double(positions) if guided and positions.dim() == 2 else positions
        self.cache = None if kv_cache == "none" else KVCache(len(model.blocks))
        self.refresh_every = refresh_every
        self.fast_forward = compiled_forward_hidden(model, prompt_mask.device) if compile else model.forward_hidden
        # CUDA graphs need the cache's addresses declared fixed once it is allocated.
        self._mark_static = compile and prompt_mask.device.type == "cuda"
        self.nfe = 0
        self.start = self.end = 0
        self._steps_in_block = self._stop = 0
        self._write_index: torch.Tensor | None = None

    def start_block(self, start: int, end: int) -> None:
        """The next call decodes canvas positions [start, end) and refreshes the cache."""
        self.start, self.end = start, end
        self._steps_in_block = 0
        self._stop = end if self.mode == "dual" else self.prompt_mask.shape[1]  # a cached step computes [start, stop)
        self._write_index = torch.arange(start, self._stop, device=self.prompt_mask.device)

    def _refresh_due(self) -> bool:
        if self._steps_in_block == 0:
            return True
        return self.refresh_every is not None and self._steps_in_block % self.refresh_every == 0

    def __call__(self, canvas: torch.Tensor) -> torch.Tensor:
        """float32 (B, end - start, V) logits of the current block."""
        ids = canvas
        if self.cfg_scale > 0:
            ids = torch.cat([canvas, mask_prompt(canvas, self.prompt_mask, self.mask_id)])
        if self.cache is None:
            with nvtx.range("forward"):
                hidden = self.fast_forward(ids, self.attention_mask, self.positions)[:, self.start:self.end]
        elif self._refresh_due():
            first = self.cache.layers[0].keys is None
            with nvtx.range("cache_refresh"):
                self.cache.record()
                hidden = self.model.forward_hidden(ids, self.attention_mask, self.positions, kv_cache=self.cache)
            hidden = hidden[:, self.start:self.end]
            if first and self._mark_static:
                self.cache.mark_static()
        else:
            self.cache.write_at(self._write_index)
            hidden = self.fast_forward(ids[:, self.start:self._stop], self.attention_mask,
                                       self.positions[..., self.start:self._stop], kv_cache=self.cache)
            hidden = hidden[:, : self.end - self.start]
        self._steps_in_block += 1
        self.nfe += 1
        logits = self.model.lm_head(hidden).float()
        if self.cfg_scale > 0:
            logits = guide(*logits.chunk(2), self.cfg_scale)
        return logits


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else torch.cat([tensor, tensor])
