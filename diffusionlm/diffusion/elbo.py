"""Likelihood estimators for masked-diffusion (and causal) language models.

A masked-diffusion model has no exact likelihood, but its ELBO (LLaDA eq. 3, MDLM) bounds it:

    -log p(x0) <= E_{t ~ U(0,1]} E_{x_t ~ q(.|x0, t)} [ sum_{i masked} -log p(x0_i | x_t) / t ]

- `elbo_nll`: that bound per sequence, by Monte Carlo over N noise levels stratified over
  [eps, 1] (t = (1 - eps) s + eps for s stratified over [0, 1), the training loss's own noise
  schedule, through `forward_process`), each with an independent masking draw. The mean is the
  estimate and the spread of the N draws gives its standard error. Leaving out t < eps makes
  it a bound only up to O(eps) (for eps = 1e-3 a ~0.1% effect); use eps = 0 for the exact one.
- `conditional_log_likelihood`: LLaDA's estimator of log p(answer | prompt) (`get_log_likelihood`):
  the number of masked answer tokens l is drawn uniformly from {1..L}, stratified within each
  batch, exactly l positions are masked and each masked token's loss is weighted by L / l.
  It has lower variance than the t-form for short answers; optional classifier-free guidance.
- `causal_nll`: the exact negative log-likelihood of a causal model (sum of next-token losses).

`LikelihoodTally` sums per-sequence estimates over a dataset into a perplexity (a "<= PPL"
upper bound for the diffusion estimators) and bits per byte of the original text, each with
two standard errors: the total one, from the spread of the per-sequence estimates (how much
the number would move if other sequences of the same text were scored; it includes the
Monte-Carlo noise), and the Monte-Carlo part alone (how much it would move if the same
sequences were scored again with other noise draws). The Monte-Carlo part treats a sequence's
stratified draws as independent, which overstates it, so it can exceed the total.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusionlm.diffusion.forward_process import apply_mask, mask_exact_count, mask_probability, sample_times
from diffusionlm.diffusion.guidance import guide, mask_prompt
from diffusionlm.diffusion.loss import masked_token_cross_entropy, next_token_cross_entropy


@dataclass
class SequenceEstimate:
    """Per-sequence negative log-likelihood (nats) and the standard error of its estimate."""

    nll: torch.Tensor
    standard_error: torch.Tensor
    num_samples: int


def _masked_token_nll(model: nn.Module, x0: torch.Tensor, noisy: torch.Tensor, is_masked: torch.Tensor) -> torch.Tensor:
    """float64 (B,): each row's summed -log p(x0_i | noisy) over its masked positions."""
    token_nll, masked = masked_token_cross_entropy(model, x0, noisy, is_masked)
    return torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device).index_add_(0, masked[0], token_nll.double())


def _summarize(samples: torch.Tensor) -> SequenceEstimate:
    """(B, N) per-draw estimates -> mean and standard error (sample std / sqrt(N))."""
    n = samples.shape[1]
    spread = samples.std(dim=1) if n > 1 else torch.zeros_like(samples[:, 0])
    return SequenceEstimate(nll=samples.mean(dim=1), standard_error=spread / math.sqrt(n), num_samples=n)


@torch.no_grad()
def elbo_nll(model: nn.Module, x0: torch.Tensor, *, mask_id: int, num_samples: int, noise_epsilon: float,
             samples_per_forward: int | None = None, generator: torch.Generator | None = None) -> SequenceEstimate:
    """ELBO bound on -log p(x0) for each row of x0 (B, L), from `num_samples` noise draws.

    samples_per_forward: how many draws of one sequence share a forward pass (memory knob;
    default all of them).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    batch, length = x0.shape
    chunk = samples_per_forward or num_samples
    times = torch.stack([sample_times(num_samples, antithetic=True, generator=generator, device=x0.device)
                         for _ in range(batch)])
    p_mask = mask_probability(times, noise_epsilon)  # (B, N), stratified over [eps, 1]
    samples = torch.empty(batch, num_samples, dtype=torch.float64, device=x0.device)
    for lo in range(0, num_samples, chunk):
        hi = min(lo + chunk, num_samples)
        clean = x0[:, None].expand(batch, hi - lo, length).reshape(-1, length)
        p = p_mask[:, lo:hi].reshape(-1)
        noisy, is_masked = apply_mask(clean, p, mask_id, generator=generator)
        samples[:, lo:hi] = (_masked_token_nll(model, clean, noisy, is_masked) / p.double()).view(batch, hi - lo)
    return _summarize(samples)


@torch.no_grad()
def conditional_log_likelihood(model: nn.Module, prompt: torch.Tensor, answer: torch.Tensor, *, mask_id: int,
                               mc_num: int = 128, batch_size: int = 16, cfg_scale: float = 0.0,
                               generator: torch.Generator | None = None) -> tuple[float, float]:
    """LLaDA's Monte-Carlo estimate of log p(answer | prompt) and its standard error.

    prompt (Lp,), answer (La,) 1-D id tensors. Each batch of `batch_size` draws takes one
    k ~ U{1..La} and masks counts round(linspace(k, k + (b-1) La / b)) wrapped into 1..La, so
    the batch covers the masking levels evenly. With cfg_scale w > 0 the logits are
    un + (w + 1)(cond - un), the unconditional pass seeing the prompt masked.
    """
    if mc_num <= 0 or batch_size <= 0 or mc_num % batch_size:
        raise ValueError(f"mc_num ({mc_num}) must be a positive multiple of batch_size ({batch_size})")
    device = answer.device
    prompt_length, answer_length = prompt.numel(), answer.numel()
    sequence = torch.cat([prompt, answer])[None].expand(batch_size, -1)
    draw_device = generator.device if generator is not None else device
    losses = []
    for _ in range(mc_num // batch_size):
        k = int(torch.randint(1, answer_length + 1, (), generator=generator, device=draw_device))
        counts = torch.linspace(k, k + (batch_size - 1) * answer_length / batch_size, batch_size,
                                device=device).round().long()
        counts = (counts - 1) % answer_length + 1
        is_masked = torch.zeros_like(sequence, dtype=torch.bool)
        is_masked[:, prompt_length:] = mask_exact_count((batch_size, answer_length), counts, generator, device)
        noisy = sequence.masked_fill(is_masked, mask_id)
        row_nll = _masked_answer_nll(model, sequence, noisy, is_masked, prompt_length, cfg_scale, mask_id)
        losses.append(row_nll * answer_length / counts.double())
    estimate = _summarize(torch.cat(losses)[None])
    return -float(estimate.nll[0]), float(estimate.standard_error[0])


def _masked_answer_nll(model: nn.Module, sequence: torch.Tensor, noisy: torch.Tensor, is_masked: torch.Tensor,
                       prompt_length: int, cfg_scale: float, mask_id: int) -> torch.Tensor:
    """float64 (B,): summed -log p of each row's masked tokens, with classifier-free guidance
    when cfg_scale > 0. Only masked positions go through the LM head, guided or not."""
    if cfg_scale <= 0:
        return _masked_token_nll(model, sequence, noisy, is_masked)
    batch = noisy.shape[0]
    masked = is_masked.nonzero(as_tuple=True)
    # The same masked positions in the conditional rows and in their unconditional copies.
    both = (torch.cat([masked[0], masked[0] + batch]), torch.cat([masked[1], masked[1]]))
    logits = model(torch.cat([noisy, mask_prompt(noisy, prompt_length, mask_id)]), positions_to_score=both)
    conditional, unconditional = logits.float().chunk(2)
    token_nll = F.cross_entropy(guide(conditional, unconditional, cfg_scale), sequence[masked], reduction="none")
    return torch.zeros(batch, dtype=torch.float64, device=noisy.device).index_add_(0, masked[0], token_nll.double())


@torch.no_grad()
def causal_nll(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """float64 (B,): exact -sum_i log p(x_i | x_<i) for i >= 1 (the first token has no context)."""
    return next_token_cross_entropy(model, x).double().sum(dim=1)


@dataclass
class PerplexityReport:
    """Dataset totals. For diffusion estimators `is_bound` is True: the perplexity is an upper
    bound ("<= PPL"). `*_se` are total standard errors (sequence-to-sequence spread, Monte-Carlo
    noise included), `*_mc_se` the Monte-Carlo part alone (0 for exact). `num_documents`
    counts the document separators in the scored tokens (documents that end in the text)."""

    nll_per_token: float
    nll_per_token_se: float
    nll_per_token_mc_se: float
    perplexity: float
    perplexity_se: float
    bits_per_byte: float
    bits_per_byte_se: float
    bits_per_byte_mc_se: float
    num_sequences: int
    num_tokens: int
    num_bytes: int
    num_documents: int
    is_bound: bool

    @property
    def label(self) -> str:
        return "<= PPL" if self.is_bound else "PPL"


def _ratio_standard_error(numerators: list[float], denominators: list[int]) -> float:
    """Standard error of sum(numerators) / sum(denominators) over N sequences taken as
    independent draws (the ratio estimator's linearisation, spread of n_i - r d_i); NaN for N < 2.
    Consecutive windows of one text are positively correlated, so on such text it is, if
    anything, a little optimistic."""
    count, total = len(numerators), sum(denominators)
    if count < 2 or total == 0:
        return float("nan")
    ratio = sum(numerators) / total
    spread = sum((n - ratio * d) ** 2 for n, d in zip(numerators, denominators)) / (count - 1)
    return math.sqrt(spread / count) / (total / count)


class LikelihoodTally:
    """Accumulates per-sequence NLL estimates (nats) with their Monte-Carlo variances, and each
    sequence's scored tokens, bytes of text and document separators."""

    def __init__(self, is_bound: bool) -> None:
        self.is_bound = is_bound
        self.nll: list[float] = []
        self.tokens: list[int] = []
        self.bytes: list[int] = []
        self.mc_variance = 0.0
        self.num_documents = 0

    @property
    def num_sequences(self) -> int:
        return len(self.nll)

    def add(self, nll: torch.Tensor, standard_error: torch.Tensor | None, tokens: list[int], num_bytes: list[int],
            documents: int = 0) -> None:
        """nll, standard_error: (B,) per sequence; tokens, num_bytes: per sequence; documents: in all B."""
        self.nll += nll.double().tolist()
        if standard_error is not None:
            self.mc_variance += float((standard_error.double() ** 2).sum())
        self.tokens += tokens
        self.bytes += num_bytes
        self.num_documents += documents

    def report(self) -> PerplexityReport:
        num_tokens, num_bytes = sum(self.tokens), sum(self.bytes)
        if num_tokens == 0:
            raise ValueError("no tokens were scored")
        total, byte_units = sum(self.nll), max(num_bytes, 1) * math.log(2)
        per_token = total / num_tokens
        per_token_se = _ratio_standard_error(self.nll, self.tokens)
        perplexity = math.exp(per_token)
        return PerplexityReport(
            nll_per_token=per_token, nll_per_token_se=per_token_se,
            nll_per_token_mc_se=math.sqrt(self.mc_variance) / num_tokens,
            perplexity=perplexity, perplexity_se=perplexity * per_token_se,  # delta method
            bits_per_byte=total / byte_units,
            bits_per_byte_se=_ratio_standard_error(self.nll, self.bytes) / math.log(2) if num_bytes else float("nan"),
            bits_per_byte_mc_se=math.sqrt(self.mc_variance) / byte_units,
            num_sequences=self.num_sequences, num_tokens=num_tokens, num_bytes=num_bytes,
            num_documents=self.num_documents, is_bound=self.is_bound,
        )


ESTIMATORS = ("elbo", "conditional", "exact")


@torch.no_grad()
def evaluate_perplexity(model: nn.Module, batches, *, method: str, mask_id: int, count_bytes, max_sequences: int,
                        noise_epsilon: float, num_samples: int = 32, samples_per_forward: int | None = None,
                        mc_num: int = 32, mc_batch_size: int = 8, prompt_tokens: int = 0, cfg_scale: float = 0.0,
                        separator_id: int | None = None, generator: torch.Generator | None = None) -> PerplexityReport:
    """Score up to `max_sequences` rows from `batches` (an iterable of (B, L) id tensors).

    method: "elbo" (the t-form bound over whole sequences), "conditional" (LLaDA's estimator of
    each sequence's continuation after its first `prompt_tokens` tokens) or "exact" (causal
    models: next-token likelihood; the first token of each sequence has no context and is not
    scored). count_bytes(ids) gives the UTF-8 bytes of the text the scored ids stand for;
    `separator_id` (<|endoftext|>) is counted in the scored ids as the documents covered.
    """
    if method not in ESTIMATORS:
        raise ValueError(f"method must be one of {ESTIMATORS}, got {method!r}")
    tally = LikelihoodTally(is_bound=method != "exact")

    def add(nll: torch.Tensor, standard_error: torch.Tensor | None, scored: torch.Tensor) -> None:
        """scored: (B, n) the ids whose likelihood `nll` (B,) is."""
        documents = int((scored == separator_id).sum()) if separator_id is not None else 0
        tally.add(nll, standard_error, [scored.shape[1]] * scored.shape[0], [count_bytes(row) for row in scored],
                  documents)

    for batch in batches:
        batch = batch[: max_sequences - tally.num_sequences]
        if method == "elbo":
            estimate = elbo_nll(model, batch, mask_id=mask_id, num_samples=num_samples, noise_epsilon=noise_epsilon,
                                samples_per_forward=samples_per_forward, generator=generator)
            add(estimate.nll, estimate.standard_error, batch)
        elif method == "exact":
            add(causal_nll(model, batch), None, batch[:, 1:])
        else:
            for row in batch:
                prompt, answer = row[:prompt_tokens], row[prompt_tokens:]
                log_likelihood, standard_error = conditional_log_likelihood(
                    model, prompt, answer, mask_id=mask_id, mc_num=mc_num, batch_size=mc_batch_size,
                    cfg_scale=cfg_scale, generator=generator)
                add(torch.tensor([-log_likelihood]), torch.tensor([standard_error]), answer[None])
        if tally.num_sequences >= max_sequences:
            break
    return tally.report()
