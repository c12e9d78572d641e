"""The language model: token embedding, pre-norm Transformer blocks, final RMSNorm, untied head.

Parameters are always created in float32 (the master copy); mixed precision comes from
autocast around the forward pass, never from storing weights in bf16.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from config.schemas import ModelConfig
from diffusionlm.models.attention import SelfAttention, build_attend_mask
from diffusionlm.models.layers import Embedding, Linear, RMSNorm, RotaryEmbedding, SwiGLU


class Block(nn.Module):
    """x + Attn(Norm(x)), then x + FFN(Norm(x)).

    With `rows` (a (B, L) bool mask or (batch, position) index tensors) the block returns
    only those positions, (N, D): every position still serves as a key and value, but the
    output projection, residual and FFN run on the selected rows alone. Everything after
    attention is row-wise, so the selected rows equal the full block's output.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # Residual-branch outputs are scaled down with depth (GPT-2 / Megatron) so the
        # residual stream's variance does not grow with the number of layers.
        out_scale = 1.0 / math.sqrt(2 * config.num_layers)
        self.attn_norm = RMSNorm(config.d_model)
        self.attn = SelfAttention(config.d_model, config.num_heads, out_init_scale=out_scale)
        self.ffn_norm = RMSNorm(config.d_model)
        self.ffn = SwiGLU(config.d_model, config.d_ff, out_init_scale=out_scale)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attend_mask: torch.Tensor | None, is_causal: bool, kv_cache=None, rows=None) -> torch.Tensor:
        mixed = self.attn(self.attn_norm(x), cos, sin, attend_mask, is_causal, kv_cache, rows)
        x = (x if rows is None else x[rows]) + mixed
        return x + self.ffn(self.ffn_norm(x))


class TransformerLM(nn.Module):
    """Bidirectional (default) or causal Transformer language model.

    `forward` returns logits; with `positions_to_score` only those positions go through the
    last block's output projection and FFN, the final norm and the LM head, which is how the
    diffusion loss scores masked tokens alone (the other positions' last-block outputs would
    feed nothing). Training calls
    `forward` (never `forward_hidden` + `lm_head` separately) so that a wrapper's forward and
    hooks (DDP, FSDP2) run. `forward_hidden` is for callers that reuse the hidden states, such
    as the sampler's KV cache.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = Embedding(config.vocab_size, config.d_model)
        self.rope = RotaryEmbedding(config.d_model // config.num_heads, config.rope_theta, config.context_length)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.final_norm = RMSNorm(config.d_model)
        self.lm_head = Linear(config.d_model, config.vocab_size)

    def forward_hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                       positions: torch.Tensor | None = None, *, kv_cache=None, rows=None) -> torch.Tensor:
        """(B, L) ids -> (B, L, D) final-normed hidden states, or (N, D) for the N positions
        selected by `rows` (see `Block`), in row-major order.

        attention_mask: optional (B, L) bool, False marks padding keys (left-padded batches).
        positions: optional (L,) or (B, L) RoPE positions; defaults to 0..L-1, so a left-padded
        prompt should pass positions that start at 0 on its first real token.
        kv_cache: optional per-layer key/value caches (`kv_cache.layers[i]`, see attention.py)
        for a bidirectional model. The input ids are then a slice of a longer canvas: pass
        that slice's `positions`, and an `attention_mask` over the whole canvas (the keys).
        """
        L = input_ids.shape[1]
        if kv_cache is not None and self.config.causal:
            raise ValueError("kv_cache is for bidirectional (diffusion) models; this model is causal")
        x = self.embedding(input_ids)
        cos, sin = self.rope.tables(L if positions is None else positions)
        key_len = L if attention_mask is None else attention_mask.shape[1]
        attend_mask = None if attention_mask is None else build_attend_mask(attention_mask, L, key_len,
                                                                            self.config.causal)
        is_causal = self.config.causal and attend_mask is None
        last = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            layer_cache = None if kv_cache is None else kv_cache.layers[index]
            x = block(x, cos, sin, attend_mask, is_causal, layer_cache, rows if index == last else None)
        return self.final_norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, *, kv_cache=None,
                positions_to_score: torch.Tensor | tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """(B, L) ids -> (B, L, vocab_size) logits, or (N, vocab_size) for the N positions
        selected by `positions_to_score` (a (B, L) bool mask or the (rows, cols) index tensors
        of `mask.nonzero(as_tuple=True)`), in row-major order."""
        return self.lm_head(self.forward_hidden(input_ids, attention_mask, positions, kv_cache=kv_cache,
                                                rows=positions_to_score))

    def num_parameters(self, exclude_embedding: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        return total - self.embedding.weight.numel() if exclude_embedding else total


def flops_per_token(config: ModelConfig, num_non_embedding_params: int, seq_len: int) -> int:
    """Training FLOPs per token: 6*N (forward+backward matmuls) + 12*L*d*T attention scores.

    Attention is not halved: the model is bidirectional. This is the formula MFU is reported with.
    """
    return 6 * num_non_embedding_params + 12 * config.num_layers * config.d_model * seq_len
