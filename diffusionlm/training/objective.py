"""The training objective chosen by `[model].causal`: masked diffusion, or next-token prediction.

Both sit behind one call signature so the loop, validation and the benchmark treat them
alike; the math itself lives in `diffusionlm.diffusion.loss`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from config.schemas import LossWeighting, ModelConfig, TrainingConfig
from diffusionlm.data.sft import SFTBatch
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.diffusion.loss import autoregressive_loss, diffusion_loss


@dataclass
class ObjectiveOutput:
    """loss carries the graph; mask_ratio is a detached device scalar (None for the AR baseline)."""

    loss: torch.Tensor
    mask_ratio: torch.Tensor | None


@dataclass
class DiffusionObjective:
    """LLaDA's masked-diffusion loss; noise is drawn from the generators passed per call (one
    CPU generator serves as both the host and the device stream)."""

    mask_token_id: int
    noise_epsilon: float
    random_trunc_prob: float
    antithetic: bool
    mask_rate_floor: float
    mask_rate_ceiling: float
    weighting: LossWeighting

    def __call__(self, model: nn.Module, x0: torch.Tensor | SFTBatch,
                 generator: NoiseGenerators | torch.Generator | None) -> ObjectiveOutput:
        """x0: a batch of ids, or an `SFTBatch`, whose prompts are never masked (LLaDA's SFT loss)."""
        prompt_lengths = None
        if isinstance(x0, SFTBatch):
            x0, prompt_lengths = x0.ids, x0.prompt_lengths
        out = diffusion_loss(model, x0, mask_token_id=self.mask_token_id, noise_epsilon=self.noise_epsilon,
                             random_trunc_prob=self.random_trunc_prob, antithetic=self.antithetic,
                             mask_rate_floor=self.mask_rate_floor, mask_rate_ceiling=self.mask_rate_ceiling,
                             weighting=self.weighting,
                             prompt_lengths=prompt_lengths, generator=generator)
        return ObjectiveOutput(out.loss, out.mask_ratio)


class AutoregressiveObjective:
    """Next-token cross-entropy for `[model].causal = true` (draws no noise)."""

    def __call__(self, model: nn.Module, x0: torch.Tensor,
                 generator: NoiseGenerators | torch.Generator | None) -> ObjectiveOutput:
        return ObjectiveOutput(autoregressive_loss(model, x0), None)


Objective = DiffusionObjective | AutoregressiveObjective


def build_objective(model_cfg: ModelConfig, training_cfg: TrainingConfig) -> Objective:
    """The run's training objective."""
    if model_cfg.causal:
        return AutoregressiveObjective()
    return DiffusionObjective(mask_token_id=model_cfg.mask_token_id, noise_epsilon=training_cfg.noise_epsilon,
                              random_trunc_prob=training_cfg.random_trunc_prob,
                              antithetic=training_cfg.antithetic_time, mask_rate_floor=training_cfg.mask_rate_floor,
                              mask_rate_ceiling=training_cfg.mask_rate_ceiling, weighting=training_cfg.loss_weighting)
