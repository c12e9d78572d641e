"""The parallelize step (torchtitan-style): a built model in, what one rank trains out.

    model -> [compile: each block | the whole forward] -> single process | custom DDP | torch DDP | FSDP2
          -> Parallelized(model, optimizer, grad_sync, ...)

`model` is what the loop calls: the objective goes through its `forward` (with
`positions_to_score`, so only masked rows reach the LM head) and wrapper hooks fire.

Compile (`[training].compile`) is a transform of the built model, never a branch in the loop:
"blocks" compiles each Transformer block (graphs shared by identical blocks, quick to build);
"model" compiles the whole forward, embedding to LM head, as one graph. The training step
feeds it fixed-capacity row indices (see `diffusionlm.diffusion.loss`), so nothing in it has a
data-dependent shape; the capacity changes from step to step, so the graph is recompiled
once with a dynamic row count and then reused.

- custom: `ddp.DDP` (bucketed, overlapping all-reduce) + `ddp.OptimizerStateSharding` (ZeRO-1).
- torch: `DistributedDataParallel` + `ZeroRedundancyOptimizer`, the comparison/production path.
- fsdp2: `fully_shard` on every block and the root; parameters, gradients and optimizer state are
  sharded. Checkpoints are gathered with `torch.distributed.checkpoint.state_dict` into full
  (unsharded) state, so a checkpoint resumes on any world size. Muon is refused here: it
  orthogonalises whole matrices and FSDP2 holds slices.

Gradient clipping uses the global norm in every case: replicated gradients (DDP) are
identical on all ranks after synchronisation, so the local norm is the global one; FSDP2
shards sum their squares across ranks first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from config.schemas import CompileMode, DDPConfig, OptimizerConfig
from ddp.ddp import DDP
from ddp.optimizer_state_sharding import OptimizerStateSharding, named_trainable
from ddp.utils import broadcast_coalesced
from diffusionlm.errors import InputError
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.clipping import CLIP_EPS, clip_grad_norm_
from diffusionlm.training.grad_sync import GradSync, LocalGradSync
from diffusionlm.training.optim import build_optimizer, build_param_groups, optimizer_class


@dataclass
class Parallelized:
    """What the trainer needs from the parallelize step. The callables are collective: every
    rank calls them; the full state arrives on rank 0."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    grad_sync: GradSync
    clip_grad_norm: Callable[[Iterable[torch.Tensor], float], torch.Tensor]
    full_model_state: Callable[[], dict]
    optimizer_state: Callable[[], dict]
    load_optimizer_state: Callable[[dict], None]
    full_model: Callable[[], nn.Module | None]  # an unsharded model on rank 0 (export, sample)


def parallelize(model: TransformerLM, optimizer_cfg: OptimizerConfig, ddp_cfg: DDPConfig, *,
                compile: CompileMode = "off") -> Parallelized:
    """Apply compile and the data-parallel transform `[ddp].impl` (none without a process group)."""
    compile_model(model, compile)
    if not dist.is_initialized():
        return _replicated(model, model, build_optimizer(model, optimizer_cfg), LocalGradSync())
    if ddp_cfg.impl == "custom":
        wrapped = DDP(model, bucket_size_mb=ddp_cfg.bucket_size_mb)
        groups = build_param_groups(model, optimizer_cfg)
        optimizer = (OptimizerStateSharding(groups, optimizer_class(optimizer_cfg), names=named_trainable(model, groups),
                                            bucket_size_mb=ddp_cfg.bucket_size_mb)
                     if ddp_cfg.shard_optimizer_state else optimizer_class(optimizer_cfg)(groups))
        return _replicated(wrapped, model, optimizer, wrapped)
    if ddp_cfg.impl == "torch":
        return _torch_ddp(model, optimizer_cfg, ddp_cfg)
    return _fsdp2(model, optimizer_cfg)


def compile_model(model: TransformerLM, mode: CompileMode) -> None:
    """Compile `model` in place as `[training].compile` says (see the module docstring)."""
    if mode == "blocks":
        for block in model.blocks:
            block.compile()
    elif mode == "model":
        model.compile()


def _replicated(wrapped: nn.Module, module: nn.Module, optimizer: torch.optim.Optimizer,
                grad_sync: GradSync) -> Parallelized:
    """Single process and the DDP variants: every rank holds the full model. The optimizer's
    `state_dict` is either a replica's (the same on every rank) or, sharded, collective."""
    return Parallelized(model=wrapped, optimizer=optimizer, grad_sync=grad_sync, clip_grad_norm=clip_grad_norm_,
                        full_model_state=module.state_dict, optimizer_state=optimizer.state_dict,
                        load_optimizer_state=optimizer.load_state_dict,
                        full_model=lambda: module if not dist.is_initialized() or dist.get_rank() == 0 else None)


class _TorchDDPSync:
    """GradSync for torch's DDP: its reducer finishes inside backward."""

    def __init__(self, model: nn.parallel.DistributedDataParallel) -> None:
        self.model = model

    def no_sync(self) -> contextlib.AbstractContextManager:
        return self.model.no_sync()

    def finish(self) -> None:
        return None


def _torch_ddp(model: TransformerLM, optimizer_cfg: OptimizerConfig, ddp_cfg: DDPConfig) -> Parallelized:
    from torch.distributed.optim import ZeroRedundancyOptimizer

    device_ids = [model.embedding.weight.device.index] if model.embedding.weight.is_cuda else None
    wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=ddp_cfg.bucket_size_mb,
                                                  forward_sync_buffers=False)  # buffers (RoPE tables) never change
    groups = build_param_groups(model, optimizer_cfg)
    if not ddp_cfg.shard_optimizer_state:
        return _replicated(wrapped, model, optimizer_class(optimizer_cfg)(groups), _TorchDDPSync(wrapped))
    optimizer = ZeroRedundancyOptimizer(groups, optimizer_class=optimizer_class(optimizer_cfg))

    def consolidated() -> dict:
        optimizer.consolidate_state_dict(to=0)
        return optimizer.state_dict() if dist.get_rank() == 0 else {}

    parallel = _replicated(wrapped, model, optimizer, _TorchDDPSync(wrapped))
    parallel.optimizer_state = consolidated
    return parallel


class _FSDPSync:
    """GradSync for FSDP2: reduce-scatter happens in backward unless gradient sync is switched off."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @contextlib.contextmanager
    def no_sync(self):
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    def finish(self) -> None:
        return None


def sharded_clip_grad_norm_(params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Global-norm clipping over FSDP2-sharded gradients: each rank's shards contribute their
    squared norm, summed across ranks, so the factor is the same everywhere."""
    local = [p.grad.to_local() for p in params if p.grad is not None]
    device = local[0].device if local else torch.device("cpu")
    squares = torch.zeros((), dtype=torch.float32, device=device)
    if local:
        squares = torch.stack([n.float() for n in torch._foreach_norm(local)]).pow(2).sum()
    dist.all_reduce(squares, op=dist.ReduceOp.SUM)
    total_norm = squares.sqrt()
    if local:
        torch._foreach_mul_(local, (max_norm / (total_norm + CLIP_EPS)).clamp(max=1.0).to(local[0].dtype))
    return total_norm


def _fsdp2(model: TransformerLM, optimizer_cfg: OptimizerConfig) -> Parallelized:
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    if optimizer_cfg.optimizer_name == "muon":
        raise InputError('ddp.impl = "fsdp2" needs optimizer.optimizer_name = "adamw": Muon orthogonalises whole '
                         'matrices and FSDP2 shards them (use ddp.impl = "custom" for Muon)')
    broadcast_coalesced([*model.parameters(), *model.buffers()], src=0)  # shard one model, not N random ones
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = build_optimizer(model, optimizer_cfg)
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    def full_model() -> nn.Module | None:
        state = get_model_state_dict(model, options=full)
        if dist.get_rank() != 0:
            return None
        plain = TransformerLM(model.config)
        plain.load_state_dict(state)
        return plain

    return Parallelized(
        model=model, optimizer=optimizer, grad_sync=_FSDPSync(model), clip_grad_norm=sharded_clip_grad_norm_,
        full_model_state=lambda: get_model_state_dict(model, options=full),
        optimizer_state=lambda: get_optimizer_state_dict(model, optimizer, options=full),
        load_optimizer_state=lambda state: set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True)),
        full_model=full_model)
