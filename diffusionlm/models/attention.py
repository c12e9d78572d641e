"""Multi-head self-attention through `scaled_dot_product_attention`.

Bidirectional by default (the masked-diffusion denoiser sees the whole canvas); `causal=True`
gives the autoregressive baseline. Without padding no mask tensor is built, so SDPA can take
its fused flash/efficient kernels.

A layer may be given a key/value cache: any object with `update(k, v) -> (keys, values)`
that stores this forward's keys/values and returns the full set the queries attend to
(`diffusionlm.inference.cache.LayerKV` is the one the sampler uses). The model itself knows
nothing about which positions are cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from diffusionlm.models.layers import Linear, RotaryEmbedding


def build_attend_mask(attention_mask: torch.Tensor, query_len: int, key_len: int, causal: bool) -> torch.Tensor:
    """Boolean (B, 1, Lq, Lk) mask, True where a query may attend.

    `attention_mask` is (B, Lk) with True for real tokens and False for padding. Queries are
    the last `query_len` positions of the keys (as with a KV cache), which fixes the causal
    diagonal offset. Without padding no mask is built at all (SDPA's `is_causal` covers the
    causal case), so SDPA can take its fused kernels.
    """
    mask = attention_mask.bool()[:, None, None, :]
    if causal:
        device = attention_mask.device
        rows = torch.arange(query_len, device=device)[:, None] + (key_len - query_len)
        mask = mask & (rows >= torch.arange(key_len, device=device)[None, :])
    return mask


class SelfAttention(nn.Module):
    """Fused QKV projection, RoPE on queries and keys, SDPA, output projection."""

    def __init__(self, d_model: int, num_heads: int, out_init_scale: float = 1.0) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.qkv = Linear(d_model, 3 * d_model, fused_outputs=3)
        self.out = Linear(d_model, d_model, init_scale=out_init_scale)

    def project_qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, D) -> rotated q, k and v, each (B, H, L, head_dim)."""
        B, L, _ = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin), v

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attend_mask: torch.Tensor | None,
               is_causal: bool, rows=None) -> torch.Tensor:
        """SDPA over (B, H, L, hd) tensors, merged back to (B, Lq, D) and projected; with `rows`
        (a (B, Lq) bool mask or (batch, position) index tensors) only those rows are projected,
        giving (N, D)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend_mask, is_causal=is_causal)
        B, _, Lq, _ = out.shape
        merged = out.transpose(1, 2).reshape(B, Lq, self.num_heads * self.head_dim)
        return self.out(merged if rows is None else merged[rows])

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attend_mask: torch.Tensor | None = None, is_causal: bool = False,
                kv_cache=None, rows=None) -> torch.Tensor:
        q, k, v = self.project_qkv(x, cos, sin)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)
        return self.attend(q, k, v, attend_mask, is_causal, rows)
