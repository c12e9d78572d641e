"""Classifier-free guidance for masked diffusion (LLaDA, following Nie et al. 2025 Sec. 2.4).

The unconditional prediction comes from the same model with the prompt replaced by mask
tokens, so no separately trained unconditional model is needed. Sampling and the conditional
likelihood estimator both guide through this one place.
"""

from __future__ import annotations

import torch


def mask_prompt(ids: torch.Tensor, prompt: torch.Tensor | int, mask_id: int) -> torch.Tensor:
    """The unconditional input: `ids` with the prompt masked. `prompt` is a (B, L) bool mask of
    prompt positions, or the prompt length shared by every row."""
    if isinstance(prompt, int):
        unconditional = ids.clone()
        unconditional[:, :prompt] = mask_id
        return unconditional
    return ids.masked_fill(prompt, mask_id)


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """logits = un + (w + 1) * (cond - un): w = 0 is the conditional model, larger w pushes
    predictions further from what the model would say without the prompt."""
    return unconditional + (scale + 1) * (conditional - unconditional)
