"""`DDP`: data-parallel training with bucketed gradient all-reduce that overlaps backward.

How it works (the design of `torch.nn.parallel.DistributedDataParallel`, written small):

1. At construction, rank 0's parameters and buffers are broadcast so every replica starts equal.
2. Trainable parameters are packed into buckets of about `bucket_size_mb`, in *reverse*
   registration order, because backward produces gradients roughly from the last layer to the
   first: the first bucket fills first. Each bucket owns one flat gradient buffer, allocated
   once; every parameter's `.grad` becomes a view into it, so the all-reduce needs no copy.
3. A post-accumulate-grad hook per parameter counts arrivals. When a bucket is complete its
   all-reduce is launched asynchronously (buckets strictly in order, so every rank issues the
   same collectives in the same sequence) and the rest of backward runs while it is in flight.
4. `finish_gradient_synchronization()` (alias `finish`, the trainer's `GradSync` seam) launches
   the buckets still waiting (parameters no rank used this step contribute zeros, so nobody
   waits for a gradient that never comes), waits for all of them, and averages.

Gradient accumulation: inside `no_sync()` hooks only park gradients in the buckets; the backward
after it launches the reductions over the accumulated sum, so every micro-batch counts.
Frozen parameters (`requires_grad=False`) are not bucketed at all. Calling backward twice
outside `no_sync()` before finishing is not supported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ddp.utils import MEGABYTE, broadcast_coalesced, coalesced_buckets


class _Bucket:
    """A flat gradient buffer and the parameters whose `.grad` are views into it."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        self.params = params
        self.buffer = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        self.views: list[torch.Tensor] = []
        offset = 0
        for p in params:
            self.views.append(self.buffer[offset: offset + p.numel()].view_as(p))
            offset += p.numel()
        self.ready: set[int] = set()
        self.work: dist.Work | None = None


class DDP(nn.Module):
    """Wrap `module` for data-parallel training; call it like the module itself.

    `.module` is the wrapped model and `state_dict()` is the module's own (no `module.` prefix),
    so checkpoints load into an unwrapped model unchanged.
    """

    def __init__(self, module: nn.Module, bucket_size_mb: float = 25.0,
                 process_group: dist.ProcessGroup | None = None) -> None:
        super().__init__()
        self.module = module
        self.process_group = process_group
        self.world_size = dist.get_world_size(process_group)
        broadcast_coalesced([*module.parameters(), *module.buffers()], src=0, group=process_group)

        trainable = list(dict.fromkeys(p for p in module.parameters() if p.requires_grad))  # shared ones once
        # Bucketing by bytes in reverse order; params are grouped by dtype/device as well.
        groups = coalesced_buckets(reversed(trainable), int(bucket_size_mb * MEGABYTE))
        self.buckets = [_Bucket(params) for params in groups]
        self._slot: dict[nn.Parameter, tuple[int, int]] = {}
        for bucket_index, bucket in enumerate(self.buckets):
            for position, p in enumerate(bucket.params):
                self._slot[p] = (bucket_index, position)
                p.grad = bucket.views[position]
        self._sync = True
        self._next_to_launch = 0
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad_ready) for p in trainable]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally without communicating."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    def _park(self, p: nn.Parameter) -> None:
        """Make p.grad the bucket view (after `zero_grad(set_to_none=True)` autograd allocates a fresh one)."""
        bucket_index, position = self._slot[p]
        view = self.buckets[bucket_index].views[position]
        if p.grad is not view:
            if p.grad is None:  # unused on this rank since the last zero_grad
                view.zero_()
            elif p.grad.data_ptr() != view.data_ptr():
                view.copy_(p.grad)
            p.grad = view

    def _on_grad_ready(self, p: nn.Parameter) -> None:
        self._park(p)
        if not self._sync:
            return
        bucket_index, position = self._slot[p]
        self.buckets[bucket_index].ready.add(position)
        self._launch_ready_buckets()

    def _launch_ready_buckets(self, force: bool = False) -> None:
        """Launch complete buckets in order (all of them when `force`)."""
        while self._next_to_launch < len(self.buckets):
            bucket = self.buckets[self._next_to_launch]
            if not force and len(bucket.ready) < len(bucket.params):
                return
            for position, p in enumerate(bucket.params):
                if position not in bucket.ready:  # no gradient this backward: what was accumulated, or zeros
                    self._park(p)
            bucket.work = dist.all_reduce(bucket.buffer, op=dist.ReduceOp.SUM, group=self.process_group,
                                          async_op=True)
            self._next_to_launch += 1

    def finish_gradient_synchronization(self) -> None:
        """Wait for every bucket's all-reduce and average; gradients are then identical on all ranks."""
        self._launch_ready_buckets(force=True)
        for bucket in self.buckets:
            bucket.work.wait()
            bucket.buffer.div_(self.world_size)
            bucket.work = None
            bucket.ready.clear()
            for p, view in zip(bucket.params, bucket.views):
                p.grad = view
        self._next_to_launch = 0

    finish = finish_gradient_synchronization
