"""The training loop: optimizer steps made of accumulated micro-steps, with logging,
validation, checkpoints and a guard against non-finite losses.

Counting: `iteration` counts micro-steps (one forward/backward on one batch), the unit of
`max_train_iteration`, `val_freq_iteration`, `ckpting_save_iter` and `log_every`. The
optimizer steps once every `grad_accum_steps` micro-steps, so a run makes
max_train_iteration / grad_accum_steps optimizer steps and sees
max_train_iteration * batch_size sequences per rank. Periodic events fire at the first
optimizer-step boundary at or after each multiple of their frequency, so checkpoints always
hold a complete optimizer step.

Host syncs: none per step under `nan_policy = "stop"`: whether a step's loss and gradient
norm were finite stays on the device (`_NonFiniteWatch`) and is read with the logged values
at log steps, and before every validation and checkpoint, so a run stops before it saves
anything non-finite. `nan_policy = "skip"` must know before stepping, so it reads the
verdict once per optimizer step.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from tqdm import tqdm

from config.schemas import OptimizerConfig
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.training.clipping import clip_grad_norm_
from diffusionlm.training.grad_sync import GradSync
from diffusionlm.training.metrics import ActivationNorms, weight_norms
from diffusionlm.training.objective import Objective
from diffusionlm.training.schedule import apply_lr_schedule, cosine_lr
from diffusionlm.training.throughput import FlopCounter
from diffusionlm.training.validation import Validator
from logger.base import Logger
from profiling import nvtx


class NonFiniteLossError(RuntimeError):
    """Raised under `nan_policy = "stop"`; the message says where and what was (not) saved."""


@dataclass
class LoopState:
    """Progress counters; saved in checkpoints so a resumed run continues the same schedule."""

    iteration: int = 0
    optimizer_step: int = 0
    skipped_steps: int = 0


def _identity(value):
    return value


@dataclass
class StepSettings:
    """What one optimizer step needs besides the model, optimizer and data.

    Data parallelism changes two things: the global gradient norm (`clip_grad_norm`; FSDP2
    shards need a collective for it) and the reported loss, which `global_mean` averages over
    ranks, so the finiteness verdict, and with it the decision to step, is the same everywhere.
    nan_policy "skip" reads that verdict before stepping (a host sync); "stop" steps anyway and
    leaves the verdict on the device for the loop to read later.
    """

    device: torch.device
    grad_accum_steps: int
    optimizer_cfg: OptimizerConfig
    autocast: Callable[[], object]
    nan_policy: Literal["stop", "skip"] = "stop"
    clip_grad_norm: Callable[[Iterable[torch.Tensor], float], torch.Tensor] = clip_grad_norm_
    global_mean: Callable[[torch.Tensor], torch.Tensor] = _identity


@dataclass
class StepResult:
    """One optimizer step. Tensors stay on the device until a log step reads them."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    mask_ratio: torch.Tensor | None
    lr: float
    lrs: dict[str, float]
    finite: torch.Tensor  # bool, on the device
    skipped: bool  # nan_policy "skip" left the parameters untouched
    data_wait_s: float
    tokens: int


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, next_batch: Callable[[], torch.Tensor], *,
               objective: Objective, noise_generator: NoiseGenerators | torch.Generator | None, grad_sync: GradSync,
               settings: StepSettings, schedule_step: int) -> StepResult:
    """Accumulate gradients over `grad_accum_steps` batches, clip, and step (under nan_policy
    "skip", only if the loss and gradient norm are finite).

    Micro-step losses are divided by grad_accum_steps so the accumulated gradient is the mean;
    the returned loss and mask ratio are means over micro-steps and ranks.
    Gradients are synchronised (grad_sync) only on the last micro-step. Under nan_policy
    "skip" a non-finite loss or gradient norm leaves the parameters untouched (`skipped`);
    under "stop" the step is taken and `finite` tells the caller, who must stop the run.
    """
    cfg = settings.optimizer_cfg
    lrs = apply_lr_schedule(optimizer, schedule_step, cfg)
    lr = cosine_lr(schedule_step, max_lr=cfg.max_learning_rate, min_lr=cfg.min_learning_rate,
                   warmup_iters=cfg.warmup_iters, cosine_cycle_iters=cfg.cosine_cycle_iters)
    accum = settings.grad_accum_steps
    loss_sum = torch.zeros((), device=settings.device)
    mask_ratio_sum = None
    data_wait, tokens = 0.0, 0
    for micro in range(accum):
        start = time.perf_counter()
        with nvtx.range("data"):
            x0 = next_batch().to(settings.device, non_blocking=True)
        data_wait += time.perf_counter() - start
        tokens += x0.numel()
        sync_context = grad_sync.no_sync() if micro < accum - 1 else contextlib.nullcontext()
        with sync_context:
            with settings.autocast(), nvtx.range("forward"):
                out = objective(model, x0, noise_generator)
            with nvtx.range("backward"):
                (out.loss / accum).backward()
        loss_sum += out.loss.detach().float()
        if out.mask_ratio is not None:
            mask_ratio_sum = out.mask_ratio if mask_ratio_sum is None else mask_ratio_sum + out.mask_ratio
    with nvtx.range("grad_sync"):
        grad_sync.finish()
    with nvtx.range("optimizer"):
        max_norm = cfg.grad_clip_max_l2_norm
        grad_norm = settings.clip_grad_norm(model.parameters(), max_norm if max_norm is not None else float("inf"))
        if mask_ratio_sum is None:
            loss = settings.global_mean(loss_sum / accum)
        else:  # one collective for both
            loss, mask_ratio_sum = settings.global_mean(torch.stack([loss_sum, mask_ratio_sum.float()]) / accum).unbind()
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        skipped = settings.nan_policy == "skip" and not bool(finite)  # the one host sync of "skip"
        if not skipped:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=loss, grad_norm=grad_norm, mask_ratio=mask_ratio_sum, lr=lr, lrs=lrs, finite=finite,
                      skipped=skipped, data_wait_s=data_wait, tokens=tokens)


def crossed(before: int, after: int, every: int) -> bool:
    """True if a multiple of `every` lies in (before, after]."""
    return after // every > before // every


@dataclass
class LoopHooks:
    """Side effects the loop triggers but does not own: saving a checkpoint (run directory,
    optimizer shards and data-loader state are the trainer's business), reading the data
    loader's own metrics for each log line, and averaging metrics over ranks before they are
    logged (every rank calls it at the same points)."""

    save_checkpoint: Callable[[LoopState, dict[str, float]], None]
    last_checkpoint: Callable[[], str | None] = field(default=lambda: None)
    loader_metrics: Callable[[], dict[str, float]] = field(default=dict)
    reduce_metrics: Callable[[dict[str, float]], dict[str, float]] = _identity
    # Called before the first step and after each with the iteration reached; returns events to log
    # (the `[profiling]` trace and snapshot files).
    at_step: Callable[[int], dict[str, str]] = field(default=lambda iteration: {})


@dataclass
class _Window:
    """Bookkeeping between two log lines: throughput (excluding validation and checkpoint time)
    and the training loss summed over the window's optimizer steps.

    One batch's diffusion loss is a very noisy estimate (one noise level per sequence), so the
    log carries `loss_avg`, its mean over the window's steps, besides the last step's `loss`.
    The sum stays on the device; it is read at log steps only. Steps skipped for a non-finite
    loss are left out of the mean.
    """

    start: float = field(default_factory=time.perf_counter)
    tokens: int = 0
    data_wait_s: float = 0.0
    loss_sum: torch.Tensor | float = 0.0
    loss_steps: int = 0

    def add_loss(self, loss: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss
        self.loss_steps += 1

    def loss_avg(self) -> float:
        return float(self.loss_sum) / self.loss_steps if self.loss_steps else float("nan")

    def restart_clock(self) -> None:
        """Leave the time just spent (validation, a checkpoint) out of the throughput; keep the loss."""
        self.start, self.tokens, self.data_wait_s = time.perf_counter(), 0, 0.0

    def rates(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {"metrics.tokens_per_s": self.tokens / elapsed, "metrics.data_wait_frac": self.data_wait_s / elapsed}


class _NonFiniteWatch:
    """The first non-finite step of a `nan_policy = "stop"` run, recorded on the device (no sync)
    and read by `check` only where the loop reads the device anyway."""

    def __init__(self, device: torch.device) -> None:
        self.iteration = torch.full((), -1, dtype=torch.long, device=device)  # -1: every step so far was finite
        self.values = torch.zeros(2, device=device)  # that step's loss and gradient norm

    def record(self, result: StepResult, iteration: int) -> None:
        first = (self.iteration < 0) & ~result.finite
        self.iteration = torch.where(first, iteration, self.iteration)
        self.values = torch.where(first, torch.stack([result.loss.float(), result.grad_norm.float()]), self.values)

    def check(self, hooks: LoopHooks, now: int) -> None:
        iteration = int(self.iteration)
        if iteration < 0:
            return
        loss, grad_norm = self.values.tolist()
        saved = hooks.last_checkpoint()
        raise NonFiniteLossError(
            f"non-finite loss or gradient at iteration {iteration} (loss={loss}, grad_l2_norm={grad_norm}; "
            f"seen at iteration {now}); stopped without saving. "
            + (f"Last good checkpoint: {saved}. " if saved else "No checkpoint was written. ")
            + 'Lower the learning rate or set training.nan_policy = "skip".')


def _log_events(logger: Logger, events: dict[str, str], step: int) -> None:
    if events:
        logger.log(events, step=step)


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer, next_batch: Callable[[], torch.Tensor], *,
               objective: Objective, noise_generator: NoiseGenerators | torch.Generator | None, grad_sync: GradSync,
               settings: StepSettings, validator: Validator | None, logger: Logger, hooks: LoopHooks,
               state: LoopState, max_iteration: int, log_every: int, val_every: int, save_every: int,
               log_activation_norms: bool = False, log_weight_norms: bool = False,
               rank: int = 0, world_size: int = 1, flops: FlopCounter | None = None) -> LoopState:
    """Run optimizer steps until `state.iteration` reaches `max_iteration`; returns the final state.

    The last step always saves a checkpoint (the final one). `rank`/`world_size` only decide who shows
    progress; logging goes through the (rank-zero) logger and gradients through `grad_sync`.
    `flops` adds achieved TFLOP/s and MFU to each log line.
    """
    bare_model = getattr(model, "module", model)  # diagnostics look inside a DDP wrapper
    activation_norms = ActivationNorms(bare_model) if log_activation_norms else None
    progress = tqdm(total=max_iteration, initial=state.iteration, unit="it", dynamic_ncols=True,
                    disable=rank != 0 or not sys.stderr.isatty())
    window = _Window()
    watch = _NonFiniteWatch(settings.device) if settings.nan_policy == "stop" else None
    last_metrics: dict[str, float] = {}
    try:
        if validator is not None and state.iteration == 0:  # the baseline every later evaluation is read against
            logger.log(hooks.reduce_metrics(validator.evaluate(model)), step=0)
            window.restart_clock()
        _log_events(logger, hooks.at_step(state.iteration), state.iteration)
        while state.iteration < max_iteration:
            before = state.iteration
            with nvtx.range("train_step", nvtx.COARSE):
                result = train_step(model, optimizer, next_batch, objective=objective, noise_generator=noise_generator,
                                    grad_sync=grad_sync, settings=settings, schedule_step=state.optimizer_step)
            state.iteration += settings.grad_accum_steps
            _log_events(logger, hooks.at_step(state.iteration), state.iteration)
            window.tokens += result.tokens * world_size
            window.data_wait_s += result.data_wait_s
            progress.update(settings.grad_accum_steps)
            if result.skipped:
                state.skipped_steps += 1
            else:
                state.optimizer_step += 1
                window.add_loss(result.loss)
                if watch is not None:
                    watch.record(result, state.iteration)
            last = state.iteration >= max_iteration
            log_now = crossed(before, state.iteration, log_every) or last
            validate_now = validator is not None and (crossed(before, state.iteration, val_every) or last)
            save_now = crossed(before, state.iteration, save_every) or last
            if watch is not None and (log_now or validate_now or save_now):
                watch.check(hooks, state.iteration)

            if log_now:
                metrics: dict[str, float] = {
                    "metrics.loss": result.loss.item(),
                    "metrics.loss_avg": window.loss_avg(),
                    "metrics.lr": result.lr,
                    **{f"metrics.lr/{name}": lr for name, lr in result.lrs.items()},
                    "metrics.grad_l2_norm": result.grad_norm.item(),
                    **window.rates(),
                    "metrics.skipped_steps": state.skipped_steps,
                }
                if flops is not None:
                    metrics.update(flops.metrics(metrics["metrics.tokens_per_s"]))
                if result.mask_ratio is not None:
                    metrics["metrics.mask_ratio"] = result.mask_ratio.item()
                metrics.update({f"metrics.data/{k}": v for k, v in hooks.loader_metrics().items()})
                if activation_norms is not None:
                    metrics.update({f"metrics.{k}": v for k, v in activation_norms.read().items()})
                if log_weight_norms:
                    metrics.update({f"metrics.{k}": v for k, v in weight_norms(bare_model).items()})
                metrics = hooks.reduce_metrics(metrics)
                logger.log(metrics, step=state.iteration)
                progress.set_postfix(loss=f"{metrics['metrics.loss']:.3f}", refresh=False)
                last_metrics.update(metrics)
                window = _Window()

            if validate_now:
                with nvtx.range("validation", nvtx.COARSE):
                    val_metrics = hooks.reduce_metrics(validator.evaluate(model))
                logger.log(val_metrics, step=state.iteration)
                last_metrics.update(val_metrics)
                window.restart_clock()

            if save_now:
                hooks.save_checkpoint(state, last_metrics)
                window.restart_clock()
    finally:
        progress.close()
        if activation_norms is not None:
            activation_norms.remove()
    return state
