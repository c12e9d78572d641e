"""The masked-diffusion forward process and loss estimator (LLaDA / MDLM)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from config.schemas import ModelConfig, TrainingConfig
from diffusionlm.diffusion import (
    apply_mask,
    autoregressive_loss,
    diffusion_loss,
    mask_probability,
    masked_token_loss,
    random_truncate,
    sample_times,
)
from diffusionlm.diffusion.forward_process import NoiseGenerators, draw_training_masks
from diffusionlm.diffusion.loss import HEAD_ROWS_MULTIPLE, head_positions
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.objective import build_objective

torch.set_num_threads(1)


class RecordingHead(nn.Module):
    """An identity "LM head" (the toy models' hidden states are already logits) that records
    how many rows reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.rows_seen: list[int] = []

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        self.rows_seen.append(hidden.shape[0])
        return hidden


class PositionLogitsLM(nn.Module):
    """Logits depend only on the position: row i of a (L, V) table, whatever the input."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())
        self.lm_head = RecordingHead()

    def forward_hidden(self, input_ids, attention_mask=None):
        batch, length = input_ids.shape
        return self.table[:length].expand(batch, length, -1)

    def forward(self, input_ids, attention_mask=None, positions_to_score=None):
        hidden = self.forward_hidden(input_ids)
        return self.lm_head(hidden if positions_to_score is None else hidden[positions_to_score])


class MaskCountLM(nn.Module):
    """Predicts token 0 with a logit that shrinks as more of the row is masked:
    logit_0 = scale_i * (1 - k / L) at position i when k tokens are masked, other logits 0.
    A stand-in for a bidirectional model whose confidence depends on the visible context."""

    def __init__(self, scales: torch.Tensor, vocab: int, mask_token_id: int) -> None:
        super().__init__()
        self.scales, self.vocab, self.mask_token_id = scales, vocab, mask_token_id
        self.lm_head = RecordingHead()

    def forward_hidden(self, input_ids, attention_mask=None):
        length = input_ids.shape[1]
        num_masked = (input_ids == self.mask_token_id).sum(-1, keepdim=True)
        hidden = torch.zeros(*input_ids.shape, self.vocab)
        hidden[..., 0] = self.scales[:length] * (1 - num_masked / length)
        return hidden

    forward = PositionLogitsLM.forward


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


TABLE = [[2.0, -1.0, 0.5], [0.0, 1.0, -2.0], [1.5, 1.5, 0.0], [-1.0, 0.0, 3.0]]
X0 = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
IS_MASKED = torch.tensor([[True, False, True, False], [False, False, False, True]])
P_MASK = torch.tensor([0.5, 0.25])
MASK_ID = 3


def _noisy(x0, is_masked):
    return torch.where(is_masked, MASK_ID, x0)


def test_masked_token_loss_equals_hand_computed_case():
    model = PositionLogitsLM(torch.tensor(TABLE))
    loss = masked_token_loss(model, X0, _noisy(X0, IS_MASKED), IS_MASKED, P_MASK)
    expected = (_ce(TABLE[0], 0) / 0.5 + _ce(TABLE[2], 2) / 0.5 + _ce(TABLE[3], 0) / 0.25) / (2 * 4)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_masked_mean_weighting_averages_each_rows_masked_tokens():
    model = PositionLogitsLM(torch.tensor(TABLE))
    loss = masked_token_loss(model, X0, _noisy(X0, IS_MASKED), IS_MASKED, P_MASK, weighting="masked_mean")
    first = (_ce(TABLE[0], 0) + _ce(TABLE[2], 2)) / 2  # p_mask plays no part
    second = _ce(TABLE[3], 0) / 1
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    nothing = torch.zeros_like(IS_MASKED)
    assert masked_token_loss(model, X0, X0, nothing, P_MASK, weighting="masked_mean").item() == 0.0


def test_sft_loss_normalises_each_sequence_by_its_answer_length():
    model = PositionLogitsLM(torch.tensor(TABLE))
    loss = masked_token_loss(model, X0, _noisy(X0, IS_MASKED), IS_MASKED, P_MASK,
                             answer_lengths=torch.tensor([2, 3]))
    first = (_ce(TABLE[0], 0) + _ce(TABLE[2], 2)) / 0.5 / 2
    second = _ce(TABLE[3], 0) / 0.25 / 3
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_sft_diffusion_loss_never_masks_the_prompt():
    # noise_epsilon = 1 makes p_mask = 1: every answer token is masked, no prompt token is.
    model = PositionLogitsLM(torch.tensor(TABLE))
    result = diffusion_loss(model, X0, mask_token_id=MASK_ID, noise_epsilon=1.0,
                            prompt_lengths=torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    first = (_ce(TABLE[1], 1) + _ce(TABLE[2], 2) + _ce(TABLE[3], 0)) / 3
    second = (_ce(TABLE[2], 1) + _ce(TABLE[3], 0)) / 2
    assert result.loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    assert result.num_masked == 5
    assert model.lm_head.rows_seen == [8]  # the 5 masked rows, padded to the head's capacity (a multiple of 8)


def test_sft_rejects_random_truncation():
    with pytest.raises(ValueError, match="random_trunc_prob"):
        diffusion_loss(PositionLogitsLM(torch.tensor(TABLE)), X0, mask_token_id=MASK_ID, noise_epsilon=1e-3, random_trunc_prob=0.5,
                       prompt_lengths=torch.tensor([1, 1]))


def test_only_masked_positions_padded_to_a_multiple_of_eight_reach_the_head():
    model = PositionLogitsLM(torch.zeros(16, 5))
    x0 = torch.randint(0, 4, (8, 16), generator=torch.Generator().manual_seed(0))
    result = diffusion_loss(model, x0, mask_token_id=4, noise_epsilon=1e-3, generator=torch.Generator().manual_seed(1))
    num_masked = result.num_masked
    assert model.lm_head.rows_seen == [-(-num_masked // HEAD_ROWS_MULTIPLE) * HEAD_ROWS_MULTIPLE]
    assert 0 < num_masked < x0.numel()
    assert result.mask_ratio.item() == pytest.approx(num_masked / x0.numel())
    assert result.num_tokens == x0.numel()


def test_zero_masked_tokens_gives_zero_loss_that_backpropagates():
    model = PositionLogitsLM(torch.tensor(TABLE))
    nothing = torch.zeros_like(IS_MASKED)
    loss = masked_token_loss(model, X0, X0, nothing, P_MASK)
    loss.backward()
    assert loss.item() == 0.0
    assert model.table.grad is not None and torch.equal(model.table.grad, torch.zeros_like(model.table))


def test_all_prompt_sft_rows_do_not_produce_nan():
    model = PositionLogitsLM(torch.tensor(TABLE))
    result = diffusion_loss(model, X0, mask_token_id=MASK_ID, noise_epsilon=1e-3, prompt_lengths=torch.tensor([4, 4]))
    assert result.loss.item() == 0.0


def test_cross_entropy_is_computed_in_float32_under_bf16_logits():
    model = PositionLogitsLM(torch.tensor(TABLE, dtype=torch.bfloat16))
    loss = masked_token_loss(model, X0, _noisy(X0, IS_MASKED), IS_MASKED, P_MASK)
    assert loss.dtype == torch.float32


def _sampling_standard_error(length: int, eps: float, batch: int) -> float:
    """Standard error of the batch mean of #masked / (p L) with t ~ U(0, 1).

    Given p, #masked ~ Bin(L, p), so Var = E_t[(1 - p) / (p L)]
    = (ln(1 / eps) / (1 - eps) - 1) / L for p = (1 - eps) t + eps.
    """
    variance = (math.log(1 / eps) / (1 - eps) - 1) / length
    return math.sqrt(variance / batch)


@pytest.mark.parametrize("antithetic", [False, True])
def test_loss_is_unbiased_for_constant_cross_entropy(antithetic):
    # Every token's CE is log V, so E[loss] = log V * E[#masked / p] / L = log V exactly.
    vocab, length, batch, eps = 5, 8, 20_000, 1e-3
    model = PositionLogitsLM(torch.zeros(length, vocab))
    x0 = torch.randint(0, vocab - 1, (batch, length), generator=torch.Generator().manual_seed(0))
    result = diffusion_loss(model, x0, mask_token_id=vocab - 1, noise_epsilon=eps, antithetic=antithetic,
                            generator=torch.Generator().manual_seed(1))
    tolerance = 4 * math.log(vocab) * _sampling_standard_error(length, eps, batch)
    assert result.loss.item() == pytest.approx(math.log(vocab), abs=tolerance)


def _mask_count_ce(scales: torch.Tensor, vocab: int, length: int):
    def ce(i, k):
        logit = scales[i].item() * (1 - k / length)
        return math.log(math.exp(logit) + vocab - 1) - logit
    return ce


@pytest.mark.parametrize(("floor", "ceiling"), [(0.0, 1.0), (0.3, 1.0), (0.2, 0.7)])
def test_loss_is_unbiased_for_a_context_dependent_model(floor, ceiling):
    # Position i masked (prob p) with K other masked tokens, K ~ Bin(L - 1, p): the 1/p weight
    # cancels the masking probability, so E[loss] = 1/L sum_i E_t[E_K[CE_i(1 + K)]], the
    # expectation over t ~ U[floor, ceiling).
    vocab, length, batch, eps = 4, 6, 20_000, 1e-3
    scales = torch.linspace(0.5, 4.0, length)
    model = MaskCountLM(scales, vocab, mask_token_id=vocab - 1)
    ce = _mask_count_ce(scales, vocab, length)

    t = np.linspace(floor, ceiling, 4001)
    p = (1 - eps) * t + eps
    others = length - 1
    expected_ce = sum(
        math.comb(others, j) * p**j * (1 - p) ** (others - j) * ce(i, 1 + j)
        for i in range(length) for j in range(others + 1)
    ) / length
    expected = np.trapezoid(expected_ce, t) / (ceiling - floor)

    x0 = torch.zeros(batch, length, dtype=torch.long)
    result = diffusion_loss(model, x0, mask_token_id=vocab - 1, noise_epsilon=eps, mask_rate_floor=floor,
                            mask_rate_ceiling=ceiling,
                            generator=torch.Generator().manual_seed(2))
    # Per row, loss <= max CE * #masked / (p L), whose second moment is 1 + Var(#masked / (p L)).
    max_ce = max(ce(i, length) for i in range(length))
    tolerance = 4 * max_ce * math.sqrt(1 + _sampling_standard_error(length, eps, 1) ** 2) / math.sqrt(batch)
    assert result.loss.item() == pytest.approx(expected, abs=tolerance)


def test_masked_mean_estimates_llada_discrete_bound():
    # With t ~ U(0, 1) the masked count n is uniform on {0..L}; given n, the masked set is a uniform
    # n-subset, so the row mean has expectation 1/(L+1) sum_{n>=1} 1/L sum_i CE_i(n): LLaDA's
    # discrete-time bound (eq. 6) times L/(L+1), the row with nothing masked counting 0.
    vocab, length, batch = 4, 6, 20_000
    scales = torch.linspace(0.5, 4.0, length)
    model = MaskCountLM(scales, vocab, mask_token_id=vocab - 1)
    ce = _mask_count_ce(scales, vocab, length)
    discrete_bound = sum(ce(i, n) for i in range(length) for n in range(1, length + 1)) / (length * length)

    x0 = torch.zeros(batch, length, dtype=torch.long)
    result = diffusion_loss(model, x0, mask_token_id=vocab - 1, noise_epsilon=0.0, weighting="masked_mean",
                            generator=torch.Generator().manual_seed(3))
    tolerance = 4 * max(ce(i, 1) for i in range(length)) / math.sqrt(batch)  # each row's mean lies in [0, max CE]
    assert result.loss.item() == pytest.approx(discrete_bound * length / (length + 1), abs=tolerance)
    # The ELBO weighting on the same draws estimates the bound itself.
    elbo = diffusion_loss(model, x0, mask_token_id=vocab - 1, noise_epsilon=0.0,
                          generator=torch.Generator().manual_seed(3)).loss.item()
    assert elbo == pytest.approx(discrete_bound, abs=4 * tolerance)


@pytest.mark.parametrize(("floor", "ceiling"), [(0.5, 1.0), (0.2, 0.6)])
def test_every_rows_mask_rate_stays_between_floor_and_ceiling(floor, ceiling):
    length = 512
    x0 = torch.zeros(64, length, dtype=torch.long)
    seen = []
    model = PositionLogitsLM(torch.zeros(length, 3))
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].eq(2).float().mean(dim=1)))
    result = diffusion_loss(model, x0, mask_token_id=2, noise_epsilon=1e-3, antithetic=True,
                            mask_rate_floor=floor, mask_rate_ceiling=ceiling, generator=torch.Generator().manual_seed(4))
    # t is stratified over [floor, ceiling): the mean mask rate is their midpoint (0.5 for LLaDA's [0, 1)),
    # and each row's rate lies in the range up to binomial noise (sd <= 0.5 / sqrt(512) = 0.022).
    assert result.mask_ratio.item() == pytest.approx((floor + ceiling) / 2, abs=0.02)
    row_rates = seen[0]
    assert row_rates.min() > floor - 0.07 and row_rates.max() < ceiling + 0.07
    assert row_rates.max() - row_rates.min() > 0.8 * (ceiling - floor)


@pytest.mark.parametrize(("floor", "ceiling"), [(0.5, 0.5), (0.6, 0.4), (-0.1, 1.0), (0.0, 1.1)])
def test_mask_rate_range_must_be_nonempty_and_inside_0_1(floor, ceiling):
    with pytest.raises(ValueError, match="mask_rate_floor"):
        diffusion_loss(PositionLogitsLM(torch.zeros(8, 3)), torch.zeros(2, 8, dtype=torch.long), mask_token_id=2,
                       noise_epsilon=1e-3, mask_rate_floor=floor, mask_rate_ceiling=ceiling)


def test_antithetic_times_put_one_sample_in_each_stratum():
    batch = 16
    t = sample_times(batch, antithetic=True, generator=torch.Generator().manual_seed(0))
    assert ((t >= 0) & (t < 1)).all()
    assert torch.equal(torch.sort((t * batch).floor().long()).values, torch.arange(batch))


def test_mask_probability_is_floored_at_noise_epsilon():
    p = mask_probability(torch.tensor([0.0, 0.5, 1.0]), 0.1)
    torch.testing.assert_close(p, torch.tensor([0.1, 0.55, 1.0]))


def test_each_row_is_masked_at_its_own_rate():
    x0 = torch.zeros(2, 20_000, dtype=torch.long)
    _, is_masked = apply_mask(x0, torch.tensor([0.2, 0.7]), 9, generator=torch.Generator().manual_seed(0))
    rates = is_masked.float().mean(-1)
    torch.testing.assert_close(rates, torch.tensor([0.2, 0.7]), atol=0.015, rtol=0)


def test_masked_positions_hold_the_mask_token_and_others_are_untouched():
    x0 = torch.randint(0, 9, (4, 32), generator=torch.Generator().manual_seed(0))
    noisy, is_masked = apply_mask(x0, torch.full((4,), 0.5), 9, generator=torch.Generator().manual_seed(1))
    assert (noisy[is_masked] == 9).all() and torch.equal(noisy[~is_masked], x0[~is_masked])


def test_protected_positions_are_never_masked():
    x0 = torch.zeros(3, 10, dtype=torch.long)
    protected = torch.arange(10)[None, :] < torch.tensor([[2], [5], [0]])
    _, is_masked = apply_mask(x0, torch.ones(3), 9, protected=protected)
    assert torch.equal(is_masked, ~protected)


def test_random_truncation_lengths_lie_in_one_to_length():
    x0 = torch.arange(5).repeat(2, 1)
    generator = torch.Generator().manual_seed(0)
    lengths = {random_truncate(x0, 1.0, generator).shape[1] for _ in range(300)}
    assert lengths == {1, 2, 3, 4, 5}


def test_random_truncation_keeps_a_prefix():
    x0 = torch.arange(12).repeat(3, 1)
    cut = random_truncate(x0, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(cut, x0[:, : cut.shape[1]])


def test_zero_truncation_probability_draws_nothing():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    x0 = torch.zeros(2, 7, dtype=torch.long)
    assert random_truncate(x0, 0.0, generator) is x0
    assert torch.equal(generator.get_state(), state)


def test_autoregressive_loss_is_mean_next_token_cross_entropy():
    model = PositionLogitsLM(torch.tensor(TABLE))
    loss = autoregressive_loss(model, X0)
    # position i predicts token i + 1
    expected = [_ce(TABLE[i], X0[b, i + 1].item()) for b in range(2) for i in range(3)]
    assert loss.item() == pytest.approx(sum(expected) / len(expected), rel=1e-6)


def test_same_generator_seed_gives_the_same_loss():
    model = PositionLogitsLM(torch.randn(16, 5, generator=torch.Generator().manual_seed(0)))
    x0 = torch.randint(0, 4, (4, 16), generator=torch.Generator().manual_seed(1))

    def run():
        return diffusion_loss(model, x0, mask_token_id=4, noise_epsilon=1e-3, antithetic=True, random_trunc_prob=0.5,
                              generator=torch.Generator().manual_seed(7)).loss

    assert torch.equal(run(), run())


def test_training_config_reaches_the_objective():
    model_cfg = ModelConfig(vocab_size=8, context_length=4, d_model=8, num_layers=1, num_heads=2, d_ff=16,
                            mask_token_id=7, eot_token_id=6)
    training_cfg = TrainingConfig(batch_size=1, max_train_iteration=1, mask_rate_floor=0.2, mask_rate_ceiling=0.8,
                                  loss_weighting="masked_mean")
    objective = build_objective(model_cfg, training_cfg)
    assert (objective.mask_rate_floor, objective.mask_rate_ceiling, objective.weighting) == (0.2, 0.8, "masked_mean")


def test_training_config_needs_floor_below_ceiling():
    with pytest.raises(ValidationError, match=r"mask_rate_floor \(0.6\) must be < mask_rate_ceiling \(0.5\)"):
        TrainingConfig(batch_size=1, max_train_iteration=1, mask_rate_floor=0.6, mask_rate_ceiling=0.5)


def test_head_positions_list_every_masked_position_first_then_padding():
    is_masked = torch.tensor([[False, True, True], [True, False, False], [False, False, True]])
    rows, cols = head_positions(is_masked, num_masked=4)
    assert len(rows) == HEAD_ROWS_MULTIPLE  # 4 rounded up, within B * L = 9
    assert list(zip(rows[:4].tolist(), cols[:4].tolist())) == [(0, 1), (0, 2), (1, 0), (2, 2)]
    assert not is_masked[rows[4:], cols[4:]].any()


def test_head_capacity_never_exceeds_the_batch():
    rows, _ = head_positions(torch.ones(1, 3, dtype=torch.bool), num_masked=3)
    assert len(rows) == 3


def _tiny_lm():
    torch.manual_seed(0)
    return TransformerLM(ModelConfig(vocab_size=11, context_length=12, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                                     mask_token_id=10, eot_token_id=9))


def test_fixed_capacity_loss_and_gradients_equal_the_full_head_computation():
    model = _tiny_lm()
    x0 = torch.randint(0, 9, (3, 12), generator=torch.Generator().manual_seed(0))
    is_masked = torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) < 0.4
    p_mask = torch.tensor([0.3, 0.5, 0.6])
    noisy = torch.where(is_masked, 10, x0)

    loss = masked_token_loss(model, x0, noisy, is_masked, p_mask, num_masked=int(is_masked.sum()))
    fast = torch.autograd.grad(loss, list(model.parameters()))
    full_ce = torch.nn.functional.cross_entropy(model(noisy).flatten(0, 1), x0.flatten(), reduction="none").view(3, 12)
    plain = (full_ce / p_mask[:, None] * is_masked).sum() / x0.numel()
    reference = torch.autograd.grad(plain, list(model.parameters()))
    torch.testing.assert_close(loss, plain, rtol=1e-5, atol=1e-6)
    for got, want in zip(fast, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_training_masks_hit_each_row_rate_and_know_their_count_on_the_host():
    x0 = torch.zeros(2, 20_000, dtype=torch.long)
    draw = draw_training_masks(x0, torch.tensor([0.2, 0.7]), 0.0, 9,
                               generators=NoiseGenerators.of(torch.Generator().manual_seed(0)))
    torch.testing.assert_close(draw.is_masked.float().mean(-1), torch.tensor([0.2, 0.7]), atol=0.015, rtol=0)
    assert draw.num_masked == int(draw.is_masked.sum())
    assert (draw.noisy[draw.is_masked] == 9).all() and (draw.noisy[~draw.is_masked] == 0).all()


def test_training_masks_never_touch_the_prompt():
    x0 = torch.zeros(3, 10, dtype=torch.long)
    prompt_lengths = torch.tensor([2, 5, 0])
    draw = draw_training_masks(x0, torch.ones(3), 0.0, 9, generators=NoiseGenerators.of(None),
                               prompt_lengths=prompt_lengths)
    assert torch.equal(draw.is_masked, torch.arange(10)[None, :] >= prompt_lengths[:, None])


def test_masked_count_per_row_is_binomial():
    # Independent masking gives Var(count) = L p (1 - p); a fixed count per t would give 0.
    x0 = torch.zeros(4000, 50, dtype=torch.long)
    draw = draw_training_masks(x0, torch.full((4000,), 0.3), 0.0, 9,
                               generators=NoiseGenerators.of(torch.Generator().manual_seed(3)))
    counts = draw.is_masked.sum(-1).double()
    assert counts.mean().item() == pytest.approx(15.0, abs=0.15)
    assert counts.var().item() == pytest.approx(50 * 0.3 * 0.7, rel=0.08)
