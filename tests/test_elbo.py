"""Likelihood estimators: unbiased on a model with known conditionals, errors that shrink as
1/sqrt(N), and the exact causal path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from config.schemas import ModelConfig
from diffusionlm.diffusion.elbo import (
    LikelihoodTally,
    causal_nll,
    conditional_log_likelihood,
    elbo_nll,
)
from diffusionlm.models.layers import Linear
from diffusionlm.models.transformer import TransformerLM

VOCAB, LENGTH, MASK_ID = 12, 10, 11


class PositionalModel(nn.Module):
    """p(x_i | x_t) = softmax(table[i]) whatever the context: its true log-likelihood is known
    exactly, sum_i log softmax(table[i])[x_i], and so is every estimator's expectation."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.lm_head = Linear(table.shape[0], table.shape[1])
        with torch.no_grad():
            self.lm_head.weight.copy_(table.T)

    def forward_hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        return torch.eye(length)[None].expand(batch, length, length)

    def forward(self, input_ids, attention_mask=None, positions_to_score=None):
        hidden = self.forward_hidden(input_ids)
        return self.lm_head(hidden if positions_to_score is None else hidden[positions_to_score])


@pytest.fixture(scope="module")
def toy():
    generator = torch.Generator().manual_seed(0)
    table = torch.randn(LENGTH, VOCAB, generator=generator) * 2
    table[:, MASK_ID] = -1e4
    x0 = torch.randint(0, MASK_ID, (3, LENGTH), generator=generator)
    exact = -table.log_softmax(-1).gather(1, x0.T).T.double().sum(1)  # (3,) true NLL per sequence
    return PositionalModel(table), x0, exact


def test_elbo_mean_equals_the_exact_nll(toy):
    model, x0, exact = toy
    estimate = elbo_nll(model, x0, mask_id=MASK_ID, num_samples=4096, samples_per_forward=512, noise_epsilon=1e-3,
                        generator=torch.Generator().manual_seed(1))
    assert torch.all((estimate.nll - exact).abs() < 4 * estimate.standard_error)
    assert torch.allclose(estimate.nll, exact, rtol=0.03)


def test_elbo_standard_error_shrinks_like_one_over_sqrt_n(toy):
    """(With eps = 0.05: near t = 0 the 1/t weight gives the draws a heavy tail, which makes
    the sample standard deviation itself noisy at small N.)"""
    model, x0, _ = toy
    kwargs = dict(mask_id=MASK_ID, noise_epsilon=0.05)
    small = elbo_nll(model, x0, num_samples=256, generator=torch.Generator().manual_seed(2), **kwargs)
    large = elbo_nll(model, x0, num_samples=4096, generator=torch.Generator().manual_seed(3), **kwargs)
    ratio = small.standard_error / large.standard_error  # 16x the samples -> about 4x smaller
    assert torch.all((ratio > 3.0) & (ratio < 5.3))


def test_conditional_log_likelihood_mean_equals_the_exact_value(toy):
    model, x0, exact = toy
    table = model.lm_head.weight.detach().T
    prompt, answer = x0[0, :4], x0[0, 4:]
    answer_exact = float(table[4:].log_softmax(-1).gather(1, answer[:, None]).sum())
    estimate, standard_error = conditional_log_likelihood(model, prompt, answer, mask_id=MASK_ID, mc_num=2048,
                                                          batch_size=64, generator=torch.Generator().manual_seed(4))
    assert abs(estimate - answer_exact) < 4 * standard_error
    assert estimate == pytest.approx(answer_exact, rel=0.03)


def test_conditional_log_likelihood_error_shrinks_with_more_samples(toy):
    model, x0, _ = toy
    errors = [conditional_log_likelihood(model, x0[1, :3], x0[1, 3:], mask_id=MASK_ID, mc_num=n, batch_size=16,
                                         generator=torch.Generator().manual_seed(5))[1] for n in (128, 2048)]
    assert 3.0 < errors[0] / errors[1] < 5.3


def test_conditional_log_likelihood_with_guidance_on_a_context_free_model_is_unchanged(toy):
    """CFG extrapolates away from the unconditional prediction; with no dependence on the
    prompt the two coincide, so every draw (same seed) gives the same value."""
    model, x0, _ = toy
    kwargs = dict(mask_id=MASK_ID, mc_num=64, batch_size=16)
    plain = conditional_log_likelihood(model, x0[2, :4], x0[2, 4:], generator=torch.Generator().manual_seed(6), **kwargs)
    guided = conditional_log_likelihood(model, x0[2, :4], x0[2, 4:], cfg_scale=2.0,
                                        generator=torch.Generator().manual_seed(6), **kwargs)
    assert guided == pytest.approx(plain, rel=1e-5)


def test_causal_nll_is_the_sum_of_next_token_log_probs():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, context_length=32, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                         mask_token_id=MASK_ID, eot_token_id=10, causal=True)
    model = TransformerLM(config).eval()
    x = torch.randint(0, 10, (2, 9))
    expected = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for i in range(1, 9):
            log_probs = model(x[:, :i])[:, -1].double().log_softmax(-1)
            expected -= log_probs.gather(1, x[:, i:i + 1])[:, 0]
    assert torch.allclose(causal_nll(model, x), expected, atol=1e-5)


def test_tally_reports_perplexity_bits_per_byte_and_both_standard_errors():
    tally = LikelihoodTally(is_bound=True)
    tally.add(torch.tensor([10.0, 14.0]), torch.tensor([0.3, 0.4]), tokens=[4, 4], num_bytes=[10, 10], documents=1)
    report = tally.report()
    assert report.nll_per_token == pytest.approx(3.0)  # 24 nats / 8 tokens
    # Total: per-sequence residuals 10 - 3 * 4 = -2 and 14 - 12 = 2, sample variance 8, so
    # sqrt(8 / 2) = 2 nats per sequence of 4 tokens. Monte Carlo: sqrt(0.3^2 + 0.4^2) / 8.
    assert report.nll_per_token_se == pytest.approx(0.5)
    assert report.nll_per_token_mc_se == pytest.approx(0.5 / 8)
    assert report.perplexity == pytest.approx(math.exp(3.0))
    assert report.perplexity_se == pytest.approx(math.exp(3.0) * 0.5)
    assert report.bits_per_byte == pytest.approx(24 / math.log(2) / 20)
    assert report.bits_per_byte_se == pytest.approx(2 / 10 / math.log(2))  # the same residuals per 10 bytes
    assert report.bits_per_byte_mc_se == pytest.approx(0.5 / 20 / math.log(2))
    assert (report.num_sequences, report.num_tokens, report.num_bytes, report.num_documents) == (2, 8, 20, 1)
    assert report.label == "<= PPL"


def test_tally_of_one_sequence_has_no_total_standard_error():
    tally = LikelihoodTally(is_bound=False)
    tally.add(torch.tensor([6.0]), None, tokens=[3], num_bytes=[5])
    report = tally.report()
    assert report.nll_per_token == 2.0 and math.isnan(report.nll_per_token_se) and report.nll_per_token_mc_se == 0


def test_guided_answer_nll_equals_guidance_over_full_logits():
    """Only masked rows reach the head on the guided path; the result must equal guiding the
    full logits of both passes, un + (w + 1)(cond - un), then scoring the masked tokens."""
    from diffusionlm.diffusion.elbo import _masked_answer_nll

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, context_length=32, d_model=16, num_layers=2, num_heads=2, d_ff=32,
                         mask_token_id=MASK_ID, eot_token_id=10)
    model = TransformerLM(config).eval()
    sequence = torch.randint(0, MASK_ID, (3, 12))
    is_masked = torch.zeros_like(sequence, dtype=torch.bool)
    is_masked[:, 5:] = torch.rand(3, 7) < 0.5
    is_masked[:, 6] = True
    noisy = sequence.masked_fill(is_masked, MASK_ID)
    with torch.no_grad():
        conditional = model(noisy)
        unconditional = model(noisy.clone().index_fill_(1, torch.arange(5), MASK_ID))
        logits = unconditional + 3.5 * (conditional - unconditional)
        token_nll = torch.nn.functional.cross_entropy(logits[is_masked], sequence[is_masked], reduction="none")
        expected = torch.zeros(3, dtype=torch.float64).index_add_(0, is_masked.nonzero()[:, 0], token_nll.double())
        actual = _masked_answer_nll(model, sequence, noisy, is_masked, 5, 2.5, MASK_ID)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
