"""Validation on fixed batches and fixed noise draws, so every evaluation of a run is comparable.

The diffusion loss is a Monte-Carlo estimate: with fresh noise each time, two evaluations of
the same model would differ. Here the batches are read once and kept, and the noise
generator is re-created from the same seed for every evaluation, so the only thing that
changes between evaluations is the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from diffusionlm.errors import InputError
from diffusionlm.training.metrics import bits_per_byte
from diffusionlm.training.objective import Objective

VALIDATION_NOISE_SEED_OFFSET = 1_000_003


class Validator:
    """Holds the validation batches and computes val_loss, val_elbo_ppl and val_bpb."""

    def __init__(self, batches: Iterable[torch.Tensor], num_batches: int, objective: Objective,
                 decode: Callable[[list[int]], str], *, seed: int, device: torch.device,
                 autocast: Callable[[], object], source: str) -> None:
        self.batches = [batch for batch, _ in zip(batches, range(num_batches))]
        if not self.batches:
            raise InputError(f"{source}: the validation split yielded no batch (is it empty or shorter than "
                             f"one batch?); set training.skip_validation = true to train without it")
        self.objective, self.seed, self.device, self.autocast = objective, seed + VALIDATION_NOISE_SEED_OFFSET, device, autocast
        scored = [objective.scored_tokens(batch) for batch in self.batches]
        self.num_tokens = sum(s.numel() for s in scored)
        self.num_bytes = sum(len(decode(row).encode("utf-8")) for s in scored for row in s.tolist())

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Token-weighted mean loss over the fixed batches, its exp, and bits per byte."""
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.seed)
        total = torch.zeros((), device=self.device)
        for batch in self.batches:
            with self.autocast():
                out = self.objective(model, batch.to(self.device), generator)
            total += out.loss.float() * self.objective.scored_tokens(batch).numel()
        model.train(was_training)
        val_loss = total.item() / self.num_tokens
        return {
            "metrics.val_loss": val_loss,
            "metrics.val_elbo_ppl": math.exp(min(val_loss, 700.0)),
            "metrics.val_bpb": bits_per_byte(val_loss, self.num_tokens, max(self.num_bytes, 1)),
        }
