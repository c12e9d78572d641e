"""Process-group setup and teardown, and the few collectives the trainer needs.

Every rank of a run calls `init_distributed` first: it reads torchrun's environment (`RANK`,
`LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`, also set by the local launcher of
`diffusionlm-train-ddp`), picks gloo on CPU and nccl on CUDA, and sets a collective timeout so
a rank that dies makes the others fail within `timeout_s` instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

MEGABYTE = 1024 * 1024


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def env_context() -> DistributedContext:
    """Rank, world size and local rank from torchrun's environment (a single process without it)."""
    return DistributedContext(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)),
                              local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def resolve_backend(backend: str, device: torch.device) -> str:
    """`auto`: nccl for CUDA devices, gloo otherwise."""
    if backend != "auto":
        return backend
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(context: DistributedContext, backend: str, timeout_s: float) -> None:
    """Join the process group described by the environment (MASTER_ADDR/MASTER_PORT rendezvous).

    On gloo the timeout bounds every collective; on nccl the watchdog aborts a collective that
    exceeds it (TORCH_NCCL_ASYNC_ERROR_HANDLING), so in both cases a dead peer ends the run.
    """
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def teardown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_object(value, src: int = 0):
    """`value` as rank `src` has it (e.g. the run name, which may be a timestamp)."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all ranks (a new tensor; itself when not distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def all_reduce_mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Numeric metrics averaged over ranks with one collective; other values pass through.

    Every rank must pass the same keys (the loop builds identical dicts on every rank).
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    values = all_reduce_mean(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64,
                                          device=_collective_device()))
    return {**metrics, **dict(zip(keys, values.tolist()))}


def gather_to_rank_zero(value) -> list | None:
    """Every rank's `value` (any picklable object), as a list on rank 0 and None elsewhere."""
    if not dist.is_initialized():
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def _collective_device() -> torch.device:
    """nccl moves only CUDA tensors; gloo only CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def coalesced_buckets(tensors: Iterable[torch.Tensor], bucket_bytes: int) -> list[list[torch.Tensor]]:
    """Consecutive runs of same-dtype, same-device tensors of at most `bucket_bytes` each
    (a tensor larger than that gets a bucket of its own)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        last = buckets[-1] if buckets else None
        if (last is None or size + nbytes > bucket_bytes or last[0].dtype != tensor.dtype
                or last[0].device != tensor.device):
            buckets.append([tensor])
            size = nbytes
        else:
            last.append(tensor)
            size += nbytes
    return buckets


@torch.no_grad()
def broadcast_coalesced(tensors: Iterable[torch.Tensor], src: int, bucket_bytes: int = 25 * MEGABYTE,
                        group: dist.ProcessGroup | None = None) -> None:
    """Overwrite `tensors` with rank `src`'s values: one broadcast per bucket of flattened
    tensors rather than one collective per tensor."""
    for bucket in coalesced_buckets(tensors, bucket_bytes):
        flat = _flatten_dense_tensors(bucket)
        dist.broadcast(flat, src=src, group=group)
        if dist.get_rank(group) != src:
            for tensor, value in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                tensor.copy_(value)
