"""Validation on fixed batches and fixed noise draws, so every evaluation of a run is comparable.

The diffusion loss is a Monte-Carlo estimate: with fresh noise each time, two evaluations of
the same model would differ. Here the batches are read once and kept, and the noise
generator is re-created from the same seed for every evaluation, so the only thing that
changes between evaluations is the model.

The numbers come from the same estimator as `diffusionlm-eval` (`evaluate_perplexity`): the
ELBO bound for diffusion models, one noise level per sequence, and the exact next-token
likelihood for causal ones. `val_loss` is the per-token negative log-likelihood (bound),
`val_elbo_ppl` its exponential and `val_bpb` the same in bits per byte of the original text.

SFT batches are scored by the SFT objective itself on the fixed draws: the ELBO bound on
-log p(answer | prompt) per answer token (pads included, as in training), averaged over rows.
There is no bits-per-byte figure for them (the pads stand for no text).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from diffusionlm.data.sft import SFTBatch
from diffusionlm.diffusion.elbo import evaluate_perplexity
from diffusionlm.diffusion.loss import diffusion_loss
from diffusionlm.errors import InputError

VALIDATION_NOISE_SEED_OFFSET = 1_000_003


class Validator:
    """Holds the validation batches and computes val_loss, val_elbo_ppl and val_bpb."""

    def __init__(self, batches: Iterable[torch.Tensor], num_batches: int, *, causal: bool, mask_id: int,
                 noise_epsilon: float, count_text_bytes: Callable[[list[int]], int], seed: int,
                 device: torch.device, autocast: Callable[[], object], source: str) -> None:
        self.batches = [batch for _, batch in zip(range(num_batches), batches)]  # reads no batch beyond the last
        if not self.batches:
            raise InputError(f"{source}: the validation split yielded no batch (is it empty or shorter than "
                             f"one batch?); set training.skip_validation = true to train without it")
        self.method = "exact" if causal else "elbo"
        self.mask_id, self.noise_epsilon = mask_id, noise_epsilon
        self.count_text_bytes = count_text_bytes
        self.seed, self.device, self.autocast = seed + VALIDATION_NOISE_SEED_OFFSET, device, autocast
        self.num_sequences = sum(batch.shape[0] for batch in self.batches)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        with self.autocast():
            metrics = self._evaluate_sft(model) if isinstance(self.batches[0], SFTBatch) else self._evaluate(model)
        model.train(was_training)
        return metrics

    def _evaluate_sft(self, model: nn.Module) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        losses = [float(diffusion_loss(model, batch.ids.to(self.device), mask_token_id=self.mask_id,
                                       noise_epsilon=self.noise_epsilon, antithetic=True,
                                       prompt_lengths=batch.prompt_lengths, generator=generator).loss)
                  for batch in self.batches]
        val_loss = sum(losses) / len(losses)
        return {"metrics.val_loss": val_loss, "metrics.val_elbo_ppl": math.exp(min(val_loss, 700.0))}

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        report = evaluate_perplexity(
            model, (batch.to(self.device) for batch in self.batches), method=self.method, mask_id=self.mask_id,
            count_bytes=lambda ids: self.count_text_bytes(ids.tolist()),
            max_sequences=self.num_sequences,
            num_samples=1, noise_epsilon=self.noise_epsilon, generator=torch.Generator().manual_seed(self.seed))
        return {
            "metrics.val_loss": report.nll_per_token,
            "metrics.val_elbo_ppl": report.perplexity,
            "metrics.val_bpb": report.bits_per_byte,
        }
