"""Sampling rules: the temperature distribution, the nucleus, the step schedule and block plan."""

from __future__ import annotations

import pytest
import torch

from config.schemas import ModelConfig
from diffusionlm.errors import InputError
from diffusionlm.inference.generate import generate
from diffusionlm.inference.sampling import (
    confidence_scores,
    gumbel_max_sample,
    plan_blocks,
    select_above_threshold,
    top_p_filter,
    transfer_counts,
)
from diffusionlm.models.transformer import TransformerLM

VOCAB, MASK_ID = 16, 15
# chi-square critical value at p = 0.001 for 7 degrees of freedom (8 categories)
CHI2_CRITICAL_DF7 = 24.32
TOY_LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def fixed_logit_model(logits: torch.Tensor) -> TransformerLM:
    """A model that predicts the same logits (ids 8.. get -30) at every position, whatever the input."""
    config = ModelConfig(vocab_size=VOCAB, context_length=128, d_model=16, num_layers=1, num_heads=2, d_ff=32,
                         mask_token_id=MASK_ID, eot_token_id=14)
    model = TransformerLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    offset = torch.full((VOCAB,), -30.0)
    offset[: len(logits)] = logits
    model.lm_head.register_forward_hook(lambda module, args, out: out + offset)
    return model


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_gumbel_max_draws_follow_softmax_of_logits_over_temperature(temperature):
    draws = gumbel_max_sample(TOY_LOGITS.expand(40_000, -1), temperature, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=8).double()
    assert chi_square(counts, torch.softmax(TOY_LOGITS.double() / temperature, -1)) < CHI2_CRITICAL_DF7


def test_gumbel_max_at_temperature_zero_is_argmax():
    logits = torch.randn(5, 7, 11, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gumbel_max_sample(logits, 0.0), logits.argmax(-1))


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_generated_tokens_follow_softmax_of_logits_over_temperature(temperature):
    """Through the whole sampler: with random remasking the commit order ignores the sampled
    token, so every generated token is one draw from softmax(l / T)."""
    model = fixed_logit_model(TOY_LOGITS)
    result = generate(model, torch.ones(64, 2, dtype=torch.long), steps=16, gen_length=64, block_length=32,
                      temperature=temperature, remasking="random", mask_id=MASK_ID,
                      generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(result.tokens[:, 2:].flatten(), minlength=VOCAB)[:8].double()
    assert counts.sum() == 64 * 64
    assert chi_square(counts, torch.softmax(TOY_LOGITS.double() / temperature, -1)) < CHI2_CRITICAL_DF7


def test_top_p_keeps_exactly_the_nucleus():
    probs = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    kept = torch.isfinite(top_p_filter(probs.log(), 0.8))
    # sorted: 0.4, 0.3 (0.7 < 0.8), 0.15 (crosses 0.8) -> keep ids 1, 3, 4
    assert kept.tolist() == [False, True, False, True, True]
    assert torch.isfinite(top_p_filter(probs.log(), 0.35)).tolist() == [False, True, False, False, False]
    assert torch.isfinite(top_p_filter(probs.log(), 1.0)).all()


def test_sampling_with_top_p_draws_from_the_renormalised_nucleus():
    model = fixed_logit_model(TOY_LOGITS)
    result = generate(model, torch.ones(64, 2, dtype=torch.long), steps=16, gen_length=64, block_length=64,
                      temperature=1.0, top_p=0.8, remasking="random", mask_id=MASK_ID,
                      generator=torch.Generator().manual_seed(2))
    probs = torch.softmax(TOY_LOGITS.double(), -1)
    nucleus = int((probs.cumsum(-1) - probs < 0.8).sum())
    counts = torch.bincount(result.tokens[:, 2:].flatten(), minlength=VOCAB).double()
    assert counts[nucleus:].sum() == 0
    expected = probs[:nucleus] / probs[:nucleus].sum()
    statistic = chi_square(counts[:nucleus], expected)
    assert statistic < {3: 13.82, 4: 16.27}[nucleus]  # p = 0.001, nucleus - 1 degrees of freedom


def test_transfer_counts_split_evenly_with_the_remainder_first():
    assert transfer_counts(10, 4) == [3, 3, 2, 2]
    assert transfer_counts(8, 8) == [1] * 8
    assert sum(transfer_counts(37, 5)) == 37


def test_plan_blocks_matches_llada_when_blocks_divide_evenly():
    plan = plan_blocks(prompt_length=5, gen_length=64, block_length=16, steps=32)
    assert [(b.start, b.end, b.steps) for b in plan] == [(5, 21, 8), (21, 37, 8), (37, 53, 8), (53, 69, 8)]


@pytest.mark.parametrize(("gen_length", "block_length", "steps"), [(100, 32, 4), (100, 32, 7), (100, 8, 13),
                                                                   (21, 8, 3), (256, 32, 255)])
def test_plan_blocks_uses_every_step_once_and_gives_every_block_one(gen_length, block_length, steps):
    plan = plan_blocks(0, gen_length, block_length, steps)
    assert sum(b.length for b in plan) == gen_length
    assert all(b.length == block_length for b in plan[:-1]) and 0 < plan[-1].length <= block_length
    assert all(1 <= b.steps <= b.length for b in plan)
    assert sum(b.steps for b in plan) == min(steps, gen_length)


def test_plan_blocks_never_gives_a_block_more_steps_than_tokens():
    assert [b.steps for b in plan_blocks(0, 16, 8, 64)] == [8, 8]


def test_plan_blocks_rejects_fewer_steps_than_blocks():
    with pytest.raises(InputError, match="fewer than the number of blocks"):
        plan_blocks(0, 64, 8, 7)


@pytest.mark.parametrize(("remasking", "expected"), [
    ("low_confidence", [0.5, 0.25]),
    ("margin", [0.25, 0.0]),
    ("entropy", [-1.0397208, -1.3862944]),
])
def test_confidence_scores(remasking, expected):
    probs = torch.tensor([[[0.5, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    logits = probs.log()
    sampled = torch.tensor([[0, 2]])
    assert confidence_scores(logits, sampled, remasking)[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_threshold_selection_commits_all_confident_and_at_least_one():
    confidence = torch.tensor([[0.95, 0.2, 0.91, 0.99], [0.3, 0.5, 0.1, 0.2]], dtype=torch.float64)
    eligible = torch.tensor([[True, True, True, False], [True, True, False, True]])
    chosen = select_above_threshold(confidence, eligible, 0.9)
    assert chosen.tolist() == [[True, False, True, False], [False, True, False, False]]
