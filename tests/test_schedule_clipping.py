"""Warmup + cosine learning-rate schedule and global gradient-norm clipping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from config.schemas import OptimizerConfig
from diffusionlm.training.clipping import clip_grad_norm_
from diffusionlm.training.optim import AdamW
from diffusionlm.training.schedule import apply_lr_schedule, cosine_lr

torch.set_num_threads(1)

SCHEDULE = dict(max_lr=1.0, min_lr=0.1, warmup_iters=10, cosine_cycle_iters=50)


def _rates(steps, **schedule):
    return [cosine_lr(step, **schedule) for step in steps]


def test_lr_is_positive_at_step_zero():
    assert cosine_lr(0, **SCHEDULE) > 0


def test_warmup_rises_strictly_to_max_lr():
    rates = _rates(range(11), **SCHEDULE)
    assert all(a < b for a, b in zip(rates, rates[1:]))
    assert rates[10] == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_lr():
    rates = _rates(range(10, 51), **SCHEDULE)
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] == pytest.approx(0.1)
    assert cosine_lr(30, **SCHEDULE) == pytest.approx(0.55)  # half way: the mean of max and min


def test_lr_stays_at_min_after_the_cycle():
    assert _rates(range(50, 200, 7), **SCHEDULE) == [0.1] * len(range(50, 200, 7))


def test_zero_warmup_starts_at_max_lr():
    assert cosine_lr(0, max_lr=1.0, min_lr=0.1, warmup_iters=0, cosine_cycle_iters=50) == 1.0


def test_warmup_equal_to_cycle_does_not_divide_by_zero():
    rates = _rates(range(25), max_lr=1.0, min_lr=0.1, warmup_iters=10, cosine_cycle_iters=10)
    assert all(r > 0 for r in rates)
    assert rates[10:] == [0.1] * 15


def test_apply_lr_schedule_scales_each_group_from_its_own_peak():
    cfg = OptimizerConfig(max_learning_rate=1e-3, min_learning_rate=1e-4, warmup_iters=0, cosine_cycle_iters=10)
    weights, biases = nn.Parameter(torch.zeros(2, 2)), nn.Parameter(torch.zeros(2))
    optimizer = AdamW([dict(name="decay", params=[weights], max_lr=1e-3),
                       dict(name="embed", params=[biases], max_lr=5e-2)])
    assert apply_lr_schedule(optimizer, 0, cfg) == {"decay": pytest.approx(1e-3), "embed": pytest.approx(5e-2)}
    final = apply_lr_schedule(optimizer, 10, cfg)
    assert final == {"decay": pytest.approx(1e-4), "embed": pytest.approx(5e-3)}
    assert [g["lr"] for g in optimizer.param_groups] == [final["decay"], final["embed"]]


def _params_with_grads(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(s)) for s in [(4, 5), (5,), (3, 3, 2)]]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 3
    return params


def test_clip_without_any_grads_returns_zero():
    params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, 2))]
    assert clip_grad_norm_(params, 1.0).item() == 0.0
    assert all(p.grad is None for p in params)


def _params_3_4_12():
    """Gradients (3, 4) and (12,): global L2 norm sqrt(9 + 16 + 144) = 13."""
    params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(1))]
    params[0].grad, params[1].grad = torch.tensor([3.0, 4.0]), torch.tensor([12.0])
    return params


def test_clip_skips_params_without_grad():
    frozen = nn.Parameter(torch.ones(7))
    assert clip_grad_norm_(_params_3_4_12() + [frozen], 1e9).item() == pytest.approx(13.0)
    assert frozen.grad is None


def test_clip_scales_every_gradient_by_max_norm_over_the_global_norm():
    params = _params_3_4_12()
    assert clip_grad_norm_(params, 2.6).item() == pytest.approx(13.0)  # the norm before clipping
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.8], rel=1e-5)  # scaled by 2.6 / 13 = 0.2
    assert params[1].grad.tolist() == pytest.approx([2.4], rel=1e-5)


def test_clip_matches_torch_clip_grad_norm():
    ours, ref = _params_with_grads(), _params_with_grads()
    norm = clip_grad_norm_(ours, 1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 1.0)
    torch.testing.assert_close(norm, ref_norm)
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p.grad, q.grad)


def test_clip_below_threshold_leaves_grads_unchanged():
    params = _params_with_grads()
    before = [p.grad.clone() for p in params]
    norm = clip_grad_norm_(params, 1e6)
    assert norm.item() > 1.0
    assert all(torch.equal(p.grad, b) for p, b in zip(params, before))
