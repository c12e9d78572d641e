"""Model layers against plain torch references (fp32, 1e-6), and the model's contracts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from config.schemas import ModelConfig
from diffusionlm.models.attention import SelfAttention
from diffusionlm.models.layers import Embedding, Linear, RMSNorm, RotaryEmbedding, SwiGLU
from diffusionlm.models.transformer import TransformerLM

ATOL = 1e-6


def small_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=96, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                mask_token_id=95, eot_token_id=94)
    return ModelConfig(**{**base, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_linear_matches_torch_and_stores_d_out_by_d_in():
    layer = Linear(7, 5)
    assert layer.weight.shape == (5, 7)
    ref = torch.nn.Linear(7, 5, bias=False)
    ref.weight.data.copy_(layer.weight.data)
    x = torch.randn(3, 4, 7)
    torch.testing.assert_close(layer(x), ref(x), atol=ATOL, rtol=0)


def test_embedding_matches_torch():
    layer = Embedding(11, 6)
    ref = torch.nn.Embedding(11, 6)
    ref.weight.data.copy_(layer.weight.data)
    ids = torch.randint(0, 11, (2, 9))
    torch.testing.assert_close(layer(ids), ref(ids), atol=ATOL, rtol=0)


def test_rmsnorm_matches_torch_and_computes_in_float32():
    norm = RMSNorm(16)
    norm.weight.data.uniform_(0.5, 1.5)
    ref = torch.nn.RMSNorm(16, eps=1e-5)
    ref.weight.data.copy_(norm.weight.data)
    x = torch.randn(3, 5, 16) * 3
    torch.testing.assert_close(norm(x), ref(x), atol=ATOL, rtol=0)
    x_bf16 = x.bfloat16()
    expected = ref(x_bf16.float()).bfloat16()
    assert norm(x_bf16).dtype == torch.bfloat16
    torch.testing.assert_close(norm(x_bf16), expected, atol=0, rtol=0)


def test_swiglu_matches_reference_formula():
    ffn = SwiGLU(8, 12)
    x = torch.randn(2, 3, 8)
    w1, w3 = ffn.w13.weight[:12], ffn.w13.weight[12:]
    expected = (F.silu(x @ w1.T) * (x @ w3.T)) @ ffn.w2.weight.T
    torch.testing.assert_close(ffn(x), expected, atol=ATOL, rtol=0)


def test_rope_matches_complex_rotation_of_paired_dimensions():
    head_dim, L = 8, 10
    rope = RotaryEmbedding(head_dim, theta=10000.0, max_positions=L)
    x = torch.randn(2, 3, L, head_dim)
    cos, sin = rope.tables(L)
    out = RotaryEmbedding.rotate(x, cos, sin)
    # Reference: pair dimension i with i + head_dim/2 and rotate it as a complex number.
    half = head_dim // 2
    freqs = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(L, dtype=torch.float64), freqs)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angles), angles)
    expected = torch.cat((z.real, z.imag), dim=-1).float()
    torch.testing.assert_close(out, expected, atol=ATOL, rtol=0)


def test_rope_position_tensor_equals_prefix_slice_and_length_is_bounded():
    rope = RotaryEmbedding(8, max_positions=6)
    for by_tensor, by_length in zip(rope.tables(torch.arange(6)), rope.tables(6)):
        torch.testing.assert_close(by_tensor, by_length, atol=0, rtol=0)
    with pytest.raises(ValueError, match="exceeds RoPE's 6 positions"):
        rope.tables(7)


def test_rope_preserves_norms_and_relative_positions():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pos_q: int, pos_k: int) -> torch.Tensor:
        cq, sq = rope.tables(torch.tensor([pos_q]))
        ck, sk = rope.tables(torch.tensor([pos_k]))
        return (RotaryEmbedding.rotate(q, cq, sq) * RotaryEmbedding.rotate(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 1), score(12, 10), atol=1e-5, rtol=0)


def naive_attention(attn: SelfAttention, x: torch.Tensor, rope: RotaryEmbedding, causal: bool) -> torch.Tensor:
    B, L, D = x.shape
    H, hd = attn.num_heads, attn.head_dim
    q, k, v = (x @ attn.qkv.weight.T).split(D, dim=-1)
    q, k, v = (t.view(B, L, H, hd).transpose(1, 2) for t in (q, k, v))
    cos, sin = rope.tables(torch.arange(L))
    q, k = RotaryEmbedding.rotate(q, cos, sin), RotaryEmbedding.rotate(k, cos, sin)
    scores = q @ k.transpose(-1, -2) / hd**0.5
    if causal:
        scores = scores.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return out.transpose(1, 2).reshape(B, L, D) @ attn.out.weight.T


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_naive_softmax_attention(causal):
    attn, rope = SelfAttention(16, 4), RotaryEmbedding(4)
    x = torch.randn(2, 7, 16)
    cos, sin = rope.tables(torch.arange(7))
    torch.testing.assert_close(attn(x, cos, sin, is_causal=causal), naive_attention(attn, x, rope, causal),
                               atol=ATOL, rtol=0)


def test_model_is_bidirectional_by_default():
    model = TransformerLM(small_config()).eval()
    ids = torch.randint(0, 90, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 90
    assert not torch.allclose(model(ids)[0, 0], model(changed)[0, 0])


def test_causal_model_ignores_later_tokens():
    model = TransformerLM(small_config(causal=True)).eval()
    ids = torch.randint(0, 90, (1, 12))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 90
    torch.testing.assert_close(model(ids)[0, :-1], model(changed)[0, :-1], atol=ATOL, rtol=0)
    assert not torch.allclose(model(ids)[0, -1], model(changed)[0, -1])


@pytest.mark.parametrize("causal", [False, True])
def test_left_padding_with_mask_and_positions_equals_unpadded(causal):
    model = TransformerLM(small_config(causal=causal)).eval()
    ids = torch.randint(0, 90, (1, 9))
    pad = 4
    padded = torch.cat([torch.full((1, pad), 94), ids], dim=1)
    attention_mask = torch.cat([torch.zeros(1, pad, dtype=torch.bool), torch.ones(1, 9, dtype=torch.bool)], dim=1)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=attention_mask, positions=positions)[:, pad:]
    torch.testing.assert_close(out, model(ids), atol=1e-5, rtol=0)


def test_parameters_are_float32_master_copies_under_bf16_autocast():
    model = TransformerLM(small_config())
    ids = torch.randint(0, 90, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(ids)
    logits.float().sum().backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_hidden_states_plus_head_equal_logits():
    model = TransformerLM(small_config()).eval()
    ids = torch.randint(0, 90, (2, 8))
    torch.testing.assert_close(model.lm_head(model.forward_hidden(ids)), model(ids), atol=0, rtol=0)


def test_output_projections_are_scaled_down_with_depth():
    model = TransformerLM(small_config(num_layers=8, d_model=64, d_ff=128))
    block = model.blocks[0]
    assert block.attn.out.weight.std() < 0.5 * block.attn.qkv.weight.std()
    assert block.ffn.w2.weight.std() < 0.5 * block.ffn.w13.weight.std()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("as_indices", [False, True])
def test_scoring_selected_positions_equals_full_logits_and_gradients(causal, as_indices):
    """The last block runs its output projection and FFN on the scored rows only: the logits
    and every parameter's gradient equal the full forward's at those rows."""
    model = TransformerLM(small_config(causal=causal, num_layers=3))
    ids = torch.randint(0, 90, (3, 16))
    selected = torch.rand(3, 16) < 0.4
    selected[0, 0] = True  # a row may hold one position ...
    selected[1] = False  # ... or none
    rows = selected.nonzero(as_tuple=True) if as_indices else selected
    target = torch.randint(0, 90, (int(selected.sum()),))

    full = model(ids)[selected]
    F.cross_entropy(full, target).backward()
    full_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    ffn_rows = []
    model.blocks[-1].ffn.register_forward_hook(lambda module, args, out: ffn_rows.append(args[0].shape[0]))
    scored = model(ids, positions_to_score=rows)
    F.cross_entropy(scored, target).backward()

    torch.testing.assert_close(scored, full, atol=ATOL, rtol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, full_grads[name], atol=ATOL, rtol=1e-5, msg=name)
    assert ffn_rows == [int(selected.sum())]  # the last FFN ran on the scored rows alone
