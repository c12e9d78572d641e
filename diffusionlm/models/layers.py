"""The Transformer's building blocks, written from scratch with `(d_out, d_in)` weights.

Each layer owns its parameters and their initialisation; the matrix products go through the
same primitive kernels `torch.nn` uses, so writing them ourselves costs no speed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Linear(nn.Module):
    """y = x W^T with W of shape (d_out, d_in) and no bias (modern LMs drop biases).

    Initialised from a normal with std `init_scale / sqrt(d_in)` truncated at 3 std: fan-in
    scaling keeps each output's variance equal to the input's whatever the width (a fixed
    std such as GPT-2's 0.02 starves small models: they learn markedly slower).
    `fused_outputs` > 1 says W stacks that many projections of d_out / fused_outputs rows
    (QKV: 3, SwiGLU's gate and up: 2), which Muon orthogonalises one by one.
    """

    def __init__(self, d_in: int, d_out: int, init_scale: float = 1.0, fused_outputs: int = 1) -> None:
        super().__init__()
        if d_out % fused_outputs:
            raise ValueError(f"d_out {d_out} does not split into {fused_outputs} equal projections")
        self.d_in, self.d_out, self.fused_outputs = d_in, d_out, fused_outputs
        self.weight = nn.Parameter(torch.empty(d_out, d_in, dtype=torch.float32))
        self.init_std = init_scale / math.sqrt(d_in)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=self.init_std, a=-3 * self.init_std, b=3 * self.init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        fused = f", fused_outputs={self.fused_outputs}" if self.fused_outputs > 1 else ""
        return f"d_in={self.d_in}, d_out={self.d_out}{fused}"


class Embedding(nn.Module):
    """Token id -> vector lookup; weight (num_embeddings, d_model), unit-variance truncated-normal
    init (each vector has RMS ~1, the scale the first RMSNorm produces anyway)."""

    def __init__(self, num_embeddings: int, d_model: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, d_model, dtype=torch.float32))
        self.init_std = init_std
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.weight, std=self.init_std, a=-3 * self.init_std, b=3 * self.init_std)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(token_ids, self.weight)


class RMSNorm(nn.Module):
    """x / rms(x) * g, computed in float32 whatever the input dtype.

    Squaring bf16 activations loses too much precision, so we upcast, normalise and cast
    back: the standard recipe for stable mixed-precision training. `F.rms_norm` is one fused
    kernel on CUDA (as fast as the hand-written form on CPU).
    """

    def __init__(self, d_model: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, dtype=torch.float32))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), self.weight.shape, self.weight, self.eps).to(x.dtype)


class SwiGLU(nn.Module):
    """FFN(x) = W2 (silu(W1 x) * W3 x) (Shazeer 2020). W1 and W3 are stored as one fused
    (2*d_ff, d_model) matrix so the input is read once."""

    def __init__(self, d_model: int, d_ff: int, out_init_scale: float = 1.0) -> None:
        super().__init__()
        self.w13 = Linear(d_model, 2 * d_ff, fused_outputs=2)
        self.w2 = Linear(d_ff, d_model, init_scale=out_init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the "rotate half" layout.

    Dimension i of the first half and dimension i of the second half form one rotated pair
    with frequency theta^(-2i/d). This is the interleaved-pair RoPE of the paper up to a fixed
    permutation of head dimensions (which the learned Q/K projections absorb) and avoids the
    strided gathers of the interleaved form. cos/sin tables are float32.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0, max_positions: int = 2048) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {head_dim}")
        self.head_dim, self.theta = head_dim, theta
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        self.register_buffer("cos_table", angles.cos().float(), persistent=False)
        self.register_buffer("sin_table", angles.sin().float(), persistent=False)

    def tables(self, positions: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin broadcastable over (B, H, L, head_dim/2).

        `positions` is a length L (positions 0..L-1, a slice of the tables) or an (L,) / (B, L)
        tensor of positions. The tables cover `max_positions` (the model's context length) and
        are never grown: checking a position tensor's maximum would cost a device sync on every
        forward, so callers keep positions inside the context (the configs validate it).
        """
        if isinstance(positions, int):
            if positions > self.cos_table.shape[0]:
                raise ValueError(f"sequence length {positions} exceeds RoPE's {self.cos_table.shape[0]} positions")
            return self.cos_table[:positions], self.sin_table[:positions]
        cos, sin = self.cos_table[positions], self.sin_table[positions]
        if positions.dim() == 2:  # (B, L, d/2) -> (B, 1, L, d/2)
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return cos, sin

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate (B, H, L, head_dim) queries or keys by the given angles, in x's dtype."""
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
