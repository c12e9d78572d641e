"""The masked-diffusion math shared by training, sampling and evaluation."""

from diffusionlm.diffusion.forward_process import apply_mask, mask_probability, random_truncate, sample_times
from diffusionlm.diffusion.loss import DiffusionLoss, autoregressive_loss, diffusion_loss, masked_token_loss

__all__ = [
    "DiffusionLoss",
    "apply_mask",
    "autoregressive_loss",
    "diffusion_loss",
    "mask_probability",
    "masked_token_loss",
    "random_truncate",
    "sample_times",
]
