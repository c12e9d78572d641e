"""Optimizers written from scratch (AdamW, Muon) and the parameter groups they train.

Both are `torch.optim.Optimizer` subclasses, so `state_dict` / `load_state_dict`, schedulers
and checkpoints work through the base class. Per-step counters are Python ints in the state,
which keeps the bias correction free of device syncs and loads with `weights_only=True`.

Every group built here carries `name` (for `metrics.lr/<name>`) and `max_lr` (its peak
learning rate; the schedule sets `lr` from it each step).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import torch
from torch import nn

from config.schemas import OptimizerConfig
from diffusionlm.models.layers import Linear

# Quintic Newton-Schulz coefficients (Jordan et al., 2024, "Muon"): chosen to maximise the
# slope at 0 so small singular values grow fast; the iteration then oscillates in a band
# around 1 instead of converging to exactly 1, which does not hurt training.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def _adamw_step(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avgs: list[torch.Tensor],
                exp_avg_sqs: list[torch.Tensor], steps: list[int], *, lr: float, betas: tuple[float, float],
                eps: float, weight_decay: float) -> None:
    """One AdamW update (Loshchilov & Hutter) over a list of tensors, with foreach kernels.

    Decoupled decay p *= 1 - lr * wd first, then p -= lr * m_hat / (sqrt(v_hat) + eps) with
    bias-corrected moments; `steps` already counts the current step. The update is written
    here rather than delegated to torch's fused AdamW kernel: the optimizer is part of what
    this project implements, and on the benchmark shapes the whole update is ~3% of a step.
    """
    beta1, beta2 = betas
    torch._foreach_mul_(params, 1.0 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)
    denoms = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denoms, [math.sqrt(1.0 - beta2**step) for step in steps])
    torch._foreach_add_(denoms, eps)
    torch._foreach_addcdiv_(params, exp_avgs, denoms, [-lr / (1.0 - beta1**step) for step in steps])


class _AdamWStateMixin:
    """Collects a group's params with grads and their (lazily created) AdamW state, and runs
    the optimizer step over every group through `_update_group`."""

    state: dict
    param_groups: list[dict]

    def _update_group(self, group: dict) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    def _adamw_group(self, group: dict) -> None:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if params:
            _adamw_step(params, grads, exp_avgs, exp_avg_sqs, steps, lr=group["lr"], betas=group["betas"],
                        eps=group["eps"], weight_decay=group["weight_decay"])


class AdamW(_AdamWStateMixin, torch.optim.Optimizer):
    """AdamW with decoupled weight decay; numerically matches `torch.optim.AdamW` in fp32."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01) -> None:
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update_group(self, group: dict) -> None:
        self._adamw_group(group)


def orthogonalize(matrices: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximate U V^T of each (..., m, n) matrix G = U S V^T by a quintic Newton-Schulz iteration.

    X <- a X + (b A + c A^2) X with A = X X^T maps every singular value s to
    a s + b s^3 + c s^5 and leaves the singular vectors alone. Dividing by the Frobenius norm
    first puts all singular values in [0, 1], where 5 steps push them into a band around 1.
    Wide orientation (m <= n) keeps the Gram matrix A the small one. bf16 is enough
    because the result only needs to be roughly orthogonal, and it is what makes this cheap
    on tensor cores.
    """
    a, b, c = NS_COEFFICIENTS
    x = matrices.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=NS_EPS)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.mT if tall else x


def muon_shape_scale(shape: torch.Size) -> float:
    """max(1, rows / cols) ** 0.5: an orthogonal (rows, cols) update with rows > cols has
    per-entry RMS sqrt(1/rows); scaling by sqrt(rows/cols) gives it the RMS of a wide or
    square one (Jordan et al.; `adjust_lr_fn="original"` in torch.optim.Muon)."""
    rows, cols = shape[-2], shape[-1]
    return max(1.0, rows / cols) ** 0.5


class Muon(_AdamWStateMixin, torch.optim.Optimizer):
    """Muon for 2-D hidden matrices plus AdamW for everything else, in one optimizer.

    Groups with `use_muon=True` take the Muon update: momentum buffer B <- mu B + (1 - mu) g,
    Nesterov look-ahead g + mu (B - g) (an EMA form; the orthogonalisation removes the scale),
    Newton-Schulz orthogonalisation, shape scale, decoupled weight decay p *= 1 - lr * wd.
    A group's `row_blocks` = k says each of its matrices stacks k equal-height projections
    (a fused QKV weight: 3); each block is orthogonalised and shape-scaled on its own, as if
    the projections were separate matrices, not whitened against each other.
    Groups with `use_muon=False` take AdamW with their own betas/eps/weight_decay. One
    optimizer means one state_dict and one place the schedule writes learning rates.
    Same-shape matrices of a group are orthogonalised as one batched matmul.
    """

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 ns_dtype: str = "bfloat16", weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, use_muon: bool = True, row_blocks: int = 1) -> None:
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, ns_dtype=ns_dtype,
                        weight_decay=weight_decay, betas=tuple(betas), eps=eps, use_muon=use_muon,
                        row_blocks=row_blocks)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["ns_dtype"] not in _DTYPES:
                raise ValueError(f"ns_dtype must be one of {sorted(_DTYPES)}, got {group['ns_dtype']!r}")
            if group["use_muon"]:
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon group {group.get('name', '?')!r} holds a {p.ndim}-D parameter "
                                         f"of shape {tuple(p.shape)}; Muon only updates 2-D matrices")
                    if p.shape[0] % group["row_blocks"]:
                        raise ValueError(f"Muon group {group.get('name', '?')!r} holds a matrix of shape "
                                         f"{tuple(p.shape)} whose rows do not split into "
                                         f"{group['row_blocks']} blocks")

    def _update_group(self, group: dict) -> None:
        if group["use_muon"]:
            self._muon_group(group)
        else:
            self._adamw_group(group)

    def _muon_group(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        buffers = []
        for p in params:
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        momentum = group["momentum"]
        torch._foreach_lerp_(buffers, grads, 1.0 - momentum)
        updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers

        by_shape: dict[torch.Size, list[int]] = defaultdict(list)
        for i, p in enumerate(params):
            by_shape[p.shape].append(i)
        lr, weight_decay, blocks = group["lr"], group["weight_decay"], group["row_blocks"]
        for shape, indices in by_shape.items():
            block = torch.Size((shape[0] // blocks, shape[1]))
            stacked = torch.stack([updates[i] for i in indices]).view(len(indices) * blocks, *block)
            orthogonal = orthogonalize(stacked, group["ns_steps"], _DTYPES[group["ns_dtype"]])
            shaped = [params[i] for i in indices]
            torch._foreach_mul_(shaped, 1.0 - lr * weight_decay)
            torch._foreach_add_(shaped, list(orthogonal.to(shaped[0].dtype).view(len(indices), *shape).unbind(0)),
                                alpha=-lr * muon_shape_scale(block))


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _params_of(model: nn.Module, attribute: str) -> set[int]:
    """ids of the trainable params of `model.<attribute>` (the embedding or the LM head)."""
    module = getattr(model, attribute, None)
    if not isinstance(module, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `{attribute}` module; parameter grouping needs "
                         f"model.embedding and model.lm_head")
    return {id(p) for p in module.parameters() if p.requires_grad}


def _adamw_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """decay: weight matrices; no_decay: norms, biases (ndim < 2) and the token embedding,
    whose rows are pulled toward zero by decay only because they are rarely used."""
    embedding = _params_of(model, "embedding")
    decay, no_decay = [], []
    for p in _trainable(model).values():
        exempt = p.ndim < 2 or id(p) in embedding
        (no_decay if exempt and not cfg.decay_norms_and_embeddings else decay).append(p)
    common = dict(lr=cfg.max_learning_rate, max_lr=cfg.max_learning_rate, betas=tuple(cfg.betas), eps=cfg.eps)
    groups = [dict(name="decay", params=decay, weight_decay=cfg.weight_decay, **common),
              dict(name="no_decay", params=no_decay, weight_decay=0.0, **common)]
    return [g for g in groups if g["params"]]


def _muon_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """embed = token embedding, head = lm_head, scalar = every param with ndim < 2, hidden =
    every other 2-D matrix anywhere in the model (not only inside the blocks). Hidden weights
    of a `Linear` that fuses k projections go to a group `hidden_x<k>` with `row_blocks` = k
    and the hidden settings, so Muon orthogonalises each projection on its own."""
    embedding, head = _params_of(model, "embedding"), _params_of(model, "lm_head")
    fused = {id(m.weight): m.fused_outputs for m in model.modules() if isinstance(m, Linear)}
    members: dict[str, list[nn.Parameter]] = {"head": [], "embed": [], "scalar": []}
    hidden_members: dict[int, list[nn.Parameter]] = defaultdict(list)
    for name, p in _trainable(model).items():
        if id(p) in embedding:
            members["embed"].append(p)
        elif id(p) in head:
            members["head"].append(p)
        elif p.ndim < 2:
            members["scalar"].append(p)
        elif p.ndim == 2:
            hidden_members[fused.get(id(p), 1)].append(p)
        else:
            raise ValueError(f"parameter {name!r} has shape {tuple(p.shape)}; "
                             f"Muon grouping handles 0-, 1- and 2-D parameters only")

    muon = cfg.muon
    hidden = muon.hidden
    groups = [dict(name="hidden" if blocks == 1 else f"hidden_x{blocks}", params=hidden_members[blocks],
                   use_muon=True, row_blocks=blocks, lr=hidden.max_learning_rate, max_lr=hidden.max_learning_rate,
                   momentum=hidden.momentum, nesterov=hidden.nesterov, ns_steps=hidden.ns_steps,
                   ns_dtype=hidden.ns_dtype, weight_decay=hidden.weight_decay)
              for blocks in sorted(hidden_members)]
    for name in ("head", "embed", "scalar"):
        group_cfg = getattr(muon, name)
        groups.append(dict(name=name, params=members[name], use_muon=False, lr=group_cfg.max_learning_rate,
                           max_lr=group_cfg.max_learning_rate, betas=tuple(group_cfg.betas), eps=group_cfg.eps,
                           weight_decay=group_cfg.weight_decay))
    return [g for g in groups if g["params"]]


def check_param_groups(model: nn.Module, groups: Iterable[dict]) -> None:
    """Raise ValueError unless every trainable parameter is in exactly one group.

    A parameter left out would silently never train; one listed twice would be updated twice.
    """
    names = {id(p): name for name, p in _trainable(model).items()}
    seen: dict[int, str] = {}
    for group in groups:
        for p in group["params"]:
            if id(p) not in names:
                raise ValueError(f"optimizer group {group['name']!r} holds a tensor of shape {tuple(p.shape)} "
                                 f"that is not a trainable parameter of the model")
            if id(p) in seen:
                raise ValueError(f"parameter {names[id(p)]!r} is in both optimizer groups "
                                 f"{seen[id(p)]!r} and {group['name']!r}")
            seen[id(p)] = group["name"]
    missing = [name for pid, name in names.items() if pid not in seen]
    if missing:
        raise ValueError(f"parameter {missing[0]!r} is in no optimizer group" +
                         (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def build_param_groups(model: nn.Module, cfg: OptimizerConfig) -> list[dict]:
    """The optimizer's parameter groups for cfg.optimizer_name, checked to partition the model."""
    groups = _muon_groups(model, cfg) if cfg.optimizer_name == "muon" else _adamw_groups(model, cfg)
    check_param_groups(model, groups)
    return groups


def optimizer_class(cfg: OptimizerConfig) -> type[torch.optim.Optimizer]:
    """The optimizer class for cfg.optimizer_name; it takes the groups of `build_param_groups`."""
    return Muon if cfg.optimizer_name == "muon" else AdamW


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return optimizer_class(cfg)(build_param_groups(model, cfg))
