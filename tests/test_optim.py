"""From-scratch AdamW and Muon, and the parameter groups they train."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from torch import nn

from config.schemas import ModelConfig, OptimizerConfig
from diffusionlm.models.layers import Linear
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.optim import (
    NS_COEFFICIENTS,
    AdamW,
    Muon,
    build_optimizer,
    build_param_groups,
    check_param_groups,
    muon_shape_scale,
    orthogonalize,
)

torch.set_num_threads(1)


class ToyLM(nn.Module):
    """Follows the model interface (embedding, blocks, final_norm, lm_head) and also owns a
    2-D matrix outside the blocks, which Muon grouping must not skip."""

    def __init__(self, vocab: int = 11, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.input_mix = nn.Parameter(torch.eye(dim))
        self.blocks = nn.ModuleList(nn.Linear(dim, dim) for _ in range(2))
        self.final_norm = nn.RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward_hidden(self, input_ids, attention_mask=None):
        x = self.embedding(input_ids) @ self.input_mix
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.final_norm(x)

    def forward(self, input_ids, attention_mask=None, positions_to_score=None):
        hidden = self.forward_hidden(input_ids)
        return self.lm_head(hidden if positions_to_score is None else hidden[positions_to_score])


def _membership(model: nn.Module, groups: list[dict]) -> dict[str, str]:
    """parameter name -> group name."""
    by_id = {id(p): g["name"] for g in groups for p in g["params"]}
    return {name: by_id.get(id(p)) for name, p in model.named_parameters()}


def _random_grads(shapes, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]


def _run(optimizer, params, grads):
    for step_grads in grads:
        for p, grad in zip(params, step_grads):
            p.grad = grad.clone()
        optimizer.step()


def _adamw_groups(params):
    """Three groups with different lr, betas, eps and weight decay."""
    return [
        dict(params=params[:2], lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1),
        dict(params=params[2:3], lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
        dict(params=params[3:], lr=5e-2, betas=(0.5, 0.9), eps=1e-5, weight_decay=0.5),
    ]


SHAPES = [(5, 7), (7,), (3, 4, 2), (6, 6)]


def _fresh_params(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in SHAPES]


def test_adamw_matches_torch_adamw_over_ten_steps_with_several_groups():
    ours, ref = _fresh_params(), _fresh_params()
    grads = _random_grads(SHAPES, 10)
    _run(AdamW(_adamw_groups(ours)), ours, grads)
    _run(torch.optim.AdamW(_adamw_groups(ref), foreach=False), ref, grads)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_adamw_state_dict_round_trip_continues_identically():
    grads = _random_grads(SHAPES, 10)
    straight = _fresh_params()
    _run(AdamW(_adamw_groups(straight)), straight, grads)

    first = _fresh_params()
    optimizer = AdamW(_adamw_groups(first))
    _run(optimizer, first, grads[:5])
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed = [p.detach().clone().requires_grad_() for p in first]
    restored = AdamW(_adamw_groups(resumed))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    _run(restored, resumed, grads[5:])
    for p, q in zip(resumed, straight):
        assert torch.equal(p, q)


def _scalar_newton_schulz(s: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def test_orthogonalize_maps_each_singular_value_through_the_quintic_polynomial():
    # Newton-Schulz acts on singular values independently: after normalising by the
    # Frobenius norm, each s goes through p(s) = a s + b s^3 + c s^5 five times.
    g = torch.Generator().manual_seed(0)
    matrix = torch.randn(24, 40, generator=g, dtype=torch.float64)
    normalised = torch.linalg.svdvals(matrix) / matrix.norm()
    expected = np.sort(_scalar_newton_schulz(normalised.numpy()))
    result = np.sort(torch.linalg.svdvals(orthogonalize(matrix, 5, torch.float64)).numpy())
    np.testing.assert_allclose(result, expected, atol=1e-9)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64)])
def test_orthogonalized_random_matrix_has_singular_values_in_the_quintic_band(shape):
    # For s in [0.03, 1] five quintic steps land in [0.682, 1.134] (exact scalar map, see the
    # test above); a random 64x256 Gaussian has s_min/||G||_F ~ 0.06. bf16 matmuls move the
    # values by ~1%, so [0.65, 1.16] is the band with margin.
    g = torch.Generator().manual_seed(0)
    band = _scalar_newton_schulz(np.linspace(0.03, 1.0, 100_001))
    assert 0.68 < band.min() and band.max() < 1.14
    singular_values = torch.linalg.svdvals(orthogonalize(torch.randn(shape, generator=g)).float())
    assert singular_values.min() > 0.65 and singular_values.max() < 1.16


def test_orthogonalize_batched_matches_one_by_one():
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 16, 8, generator=g)
    batched = orthogonalize(stack, 5, torch.float32)
    for matrix, result in zip(stack, batched):
        torch.testing.assert_close(result, orthogonalize(matrix, 5, torch.float32), rtol=1e-5, atol=1e-6)


def test_muon_shape_scale_is_sqrt_of_rows_over_cols_for_tall_matrices_only():
    assert muon_shape_scale(torch.Size([256, 64])) == pytest.approx(2.0)
    assert muon_shape_scale(torch.Size([64, 256])) == 1.0
    assert muon_shape_scale(torch.Size([32, 32])) == 1.0


def test_muon_first_step_moves_a_tall_matrix_by_lr_times_shape_scale_times_orthogonal_update():
    g = torch.Generator().manual_seed(0)
    param = torch.zeros(32, 8, requires_grad=True)
    param.grad = torch.randn(32, 8, generator=g)
    Muon([param], lr=0.1, momentum=0.9, nesterov=False, ns_dtype="float32").step()
    # first step: buffer = (1 - mu) g; the orthogonalisation removes that scale
    expected = -0.1 * 2.0 * orthogonalize(param.grad, 5, torch.float32)
    torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon not available")
def test_muon_hidden_group_matches_torch_muon():
    # torch.optim.Muon also runs Newton-Schulz in bf16 (unit roundoff 2^-8 ~ 0.4%) but with a
    # different operation order, so the trajectories agree to ~1% of the distance travelled
    # (measured 1.0-1.3%); a real difference such as dropping Nesterov or the shape scale
    # gives 14-40%. Hence 3%.
    shapes = [(32, 64), (64, 32), (48, 48)]
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=g) for s in shapes]
    ours = [p.clone().requires_grad_() for p in start]
    ref = [p.clone().requires_grad_() for p in start]
    grads = _random_grads(shapes, 10, seed=1)
    _run(Muon(ours, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1), ours, grads)
    _run(torch.optim.Muon(ref, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, adjust_lr_fn="original"),
         ref, grads)
    for p, q, p0 in zip(ours, ref, start):
        assert ((p - q).norm() / (q - p0).norm()).item() < 0.03


def test_muon_adamw_groups_match_torch_adamw():
    ours, ref = _fresh_params(), _fresh_params()
    grads = _random_grads(SHAPES, 10)
    groups = [dict(g, use_muon=False) for g in _adamw_groups(ours)]
    _run(Muon(groups), ours, grads)
    _run(torch.optim.AdamW(_adamw_groups(ref), foreach=False), ref, grads)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_muon_row_blocks_update_a_fused_matrix_as_its_separate_projections():
    # a fused QKV weight with row_blocks=3 must move exactly as three separate matrices would;
    # orthogonalising the stack whole (row_blocks=1) whitens the projections against each other
    g = torch.Generator().manual_seed(0)
    start = torch.randn(3 * 8, 16, generator=g)
    fused = start.clone().requires_grad_()
    whole = start.clone().requires_grad_()
    parts = [block.clone().requires_grad_() for block in start.chunk(3)]
    grads = _random_grads([(3 * 8, 16)], 6, seed=2)
    settings = dict(lr=0.05, momentum=0.95, weight_decay=0.1, ns_dtype="float32")
    _run(Muon([fused], row_blocks=3, **settings), [fused], grads)
    _run(Muon([whole], **settings), [whole], grads)
    _run(Muon(parts, **settings), parts, [list(step[0].chunk(3)) for step in grads])
    torch.testing.assert_close(fused, torch.cat(parts), rtol=0, atol=1e-6)
    assert (whole - fused).norm() > 0.1 * (fused - start).norm()


def test_muon_rejects_row_blocks_that_do_not_split_the_rows():
    with pytest.raises(ValueError, match="do not split into 3 blocks"):
        Muon([torch.zeros(8, 4, requires_grad=True)], row_blocks=3)


def test_linear_rejects_fused_outputs_that_do_not_split_its_rows():
    with pytest.raises(ValueError, match="d_out 8 does not split into 3"):
        Linear(4, 8, fused_outputs=3)


def test_muon_rejects_a_non_matrix_in_a_muon_group():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.zeros(4, requires_grad=True)])


def test_muon_state_dict_round_trip_continues_identically():
    model = ToyLM()
    cfg = OptimizerConfig(optimizer_name="muon")
    batch = torch.randint(0, 11, (2, 6), generator=torch.Generator().manual_seed(0))

    def train(model, optimizer, steps):
        for _ in range(steps):
            optimizer.zero_grad()
            model(batch).logsumexp(-1).mean().backward()
            optimizer.step()

    straight = ToyLM()
    straight.load_state_dict(model.state_dict())
    train(straight, build_optimizer(straight, cfg), 4)

    optimizer = build_optimizer(model, cfg)
    train(model, optimizer, 2)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = ToyLM()
    resumed.load_state_dict(saved["model"])
    restored = build_optimizer(resumed, cfg)
    restored.load_state_dict(saved["optimizer"])
    train(resumed, restored, 2)
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_adamw_groups_exempt_norms_biases_and_embedding_from_decay():
    model = ToyLM()
    groups = build_param_groups(model, OptimizerConfig())
    membership = _membership(model, groups)
    assert membership["embedding.weight"] == "no_decay"
    assert membership["final_norm.weight"] == "no_decay"
    assert membership["blocks.0.bias"] == "no_decay"
    assert membership["blocks.0.weight"] == "decay"
    assert membership["input_mix"] == "decay"
    assert {g["name"]: g["weight_decay"] for g in groups} == {"decay": 0.1, "no_decay": 0.0}


def test_decay_norms_and_embeddings_puts_everything_in_the_decay_group():
    model = ToyLM()
    groups = build_param_groups(model, OptimizerConfig(decay_norms_and_embeddings=True))
    assert set(_membership(model, groups).values()) == {"decay"}


def test_muon_groups_cover_a_matrix_outside_the_blocks():
    model = ToyLM()
    membership = _membership(model, build_param_groups(model, OptimizerConfig(optimizer_name="muon")))
    assert membership == {
        "embedding.weight": "embed",
        "input_mix": "hidden",
        "blocks.0.weight": "hidden",
        "blocks.0.bias": "scalar",
        "blocks.1.weight": "hidden",
        "blocks.1.bias": "scalar",
        "final_norm.weight": "scalar",
        "lm_head.weight": "head",
    }


def test_muon_groups_carry_name_max_lr_and_their_config():
    cfg = OptimizerConfig(optimizer_name="muon")
    groups = {g["name"]: g for g in build_param_groups(ToyLM(), cfg)}
    assert groups["hidden"]["use_muon"] and groups["hidden"]["max_lr"] == cfg.muon.hidden.max_learning_rate
    assert groups["hidden"]["momentum"] == cfg.muon.hidden.momentum
    for name in ("head", "embed", "scalar"):
        assert not groups[name]["use_muon"]
        assert groups[name]["max_lr"] == getattr(cfg.muon, name).max_learning_rate
        assert groups[name]["betas"] == getattr(cfg.muon, name).betas


@pytest.mark.parametrize("optimizer_name", ["adamw", "muon"])
def test_every_parameter_of_the_real_transformer_is_in_exactly_one_group(optimizer_name):
    model = TransformerLM(ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2,
                                                  num_heads=4, d_ff=64, mask_token_id=63, eot_token_id=62))
    groups = build_param_groups(model, OptimizerConfig(optimizer_name=optimizer_name))
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    membership = _membership(model, groups)
    assert None not in membership.values()
    if optimizer_name == "muon":
        assert membership["embedding.weight"] == "embed" and membership["lm_head.weight"] == "head"
        matrices = [n for n, p in model.named_parameters()
                    if p.ndim == 2 and n not in ("embedding.weight", "lm_head.weight")]
        expected = {"qkv": "hidden_x3", "w13": "hidden_x2"}
        assert matrices and all(membership[n] == expected.get(n.split(".")[-2], "hidden") for n in matrices)
        assert {g["name"]: g["row_blocks"] for g in groups if g["use_muon"]} == {
            "hidden": 1, "hidden_x2": 2, "hidden_x3": 3}


def test_group_check_names_a_missing_parameter():
    model = ToyLM()
    groups = build_param_groups(model, OptimizerConfig(optimizer_name="muon"))
    hidden = next(g for g in groups if g["name"] == "hidden")
    hidden["params"] = [p for p in hidden["params"] if p is not model.input_mix]
    with pytest.raises(ValueError, match="'input_mix' is in no optimizer group"):
        check_param_groups(model, groups)


def test_group_check_names_a_parameter_listed_twice():
    model = ToyLM()
    groups = build_param_groups(model, OptimizerConfig())
    groups[1]["params"].append(model.lm_head.weight)
    with pytest.raises(ValueError, match="'lm_head.weight' is in both"):
        check_param_groups(model, groups)


def test_frozen_parameters_are_left_out_of_the_groups():
    model = ToyLM()
    model.embedding.weight.requires_grad_(False)
    groups = build_param_groups(model, OptimizerConfig(optimizer_name="muon"))
    assert "embed" not in {g["name"] for g in groups}
