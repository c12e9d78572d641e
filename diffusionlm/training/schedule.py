"""Learning-rate schedule: linear warmup, cosine decay, then a floor.

Each optimizer group has its own peak `max_lr` (Muon's hidden/head/embed/scalar groups differ);
all follow the same shape, with the floor scaled by min_learning_rate / max_learning_rate.
"""

from __future__ import annotations

import math

import torch

from config.schemas import OptimizerConfig


def cosine_lr(step: int, *, max_lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """Learning rate at optimizer step `step` (0-based).

    Warmup (step < warmup_iters): max_lr * (step + 1) / (warmup_iters + 1), which is already
    positive at step 0 (a zero first step would waste a batch) and rises strictly to max_lr,
    reached at step warmup_iters where the cosine starts.
    Cosine (warmup_iters <= step <= cosine_cycle_iters): from max_lr down to min_lr.
    After cosine_cycle_iters: min_lr. An empty cosine phase (cosine_cycle_iters <=
    warmup_iters) goes straight from warmup to min_lr.
    """
    if step < warmup_iters:
        return max_lr * (step + 1) / (warmup_iters + 1)
    if step >= cosine_cycle_iters:
        return min_lr
    progress = (step - warmup_iters) / (cosine_cycle_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def apply_lr_schedule(optimizer: torch.optim.Optimizer, step: int, cfg: OptimizerConfig) -> dict[str, float]:
    """Set every group's `lr` for `step` from its `max_lr`; returns {group name: lr} for
    logging as `metrics.lr/<name>`."""
    floor_ratio = cfg.min_learning_rate / cfg.max_learning_rate
    rates = {}
    for group in optimizer.param_groups:
        group["lr"] = cosine_lr(step, max_lr=group["max_lr"], min_lr=group["max_lr"] * floor_ratio,
                                warmup_iters=cfg.warmup_iters, cosine_cycle_iters=cfg.cosine_cycle_iters)
        rates[group["name"]] = group["lr"]
    return rates
