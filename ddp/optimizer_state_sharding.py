"""`OptimizerStateSharding`: ZeRO stage 1, optimizer state partitioned across ranks.

Each rank owns a subset of whole parameters and keeps optimizer state (AdamW moments, Muon
momentum) only for those, so state memory shrinks by the world size. After the inner
optimizer updates the owned parameters, every owner broadcasts them, coalesced into buckets
(one collective per bucket, not per tensor), and all replicas are equal again.

Ownership is a greedy size balance (largest parameter first, to the least loaded rank) over
parameter *names*, so it is the same on every rank and every restart. Whole parameters are
owned, never slices, which is what Muon needs: Newton-Schulz orthogonalises a whole matrix.

Checkpoints: `state_dict()` is collective and returns, on rank 0, the consolidated state in
torch's standard layout (state keyed by the parameter's position over all groups). It loads
into this class on any world size and into the unsharded optimizer alike.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ddp.utils import MEGABYTE, broadcast_coalesced, gather_to_rank_zero

_GROUP_ONLY_KEYS = ("params",)


def _as_groups(params: Iterable) -> list[dict]:
    params = list(params)
    if params and isinstance(params[0], dict):
        return [dict(group) for group in params]
    return [{"params": params}]


def assign_owners(names: list[str], sizes: list[int], world_size: int) -> dict[str, int]:
    """name -> owning rank, balancing the summed sizes; deterministic (ties broken by name)."""
    load = [0] * world_size
    owners: dict[str, int] = {}
    for size, name in sorted(zip(sizes, names), key=lambda item: (-item[0], item[1])):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[name] = rank
        load[rank] += size
    return owners


class OptimizerStateSharding(torch.optim.Optimizer):
    """Wrap any `torch.optim.Optimizer` class so each rank steps only the parameters it owns.

    params: parameters or parameter groups (dicts with extra keys are kept: `name`, `max_lr`, ...).
    names: one name per parameter in group order (e.g. from `named_parameters()`); positional
    names are used when left out, which is fine as long as every rank builds the same groups.
    `param_groups` hold every parameter, so a learning-rate schedule writes them as usual; the
    values are copied into the inner optimizer at each step.
    """

    def __init__(self, params: Iterable, optimizer_cls: type[torch.optim.Optimizer], *,
                 names: list[str] | None = None, process_group: dist.ProcessGroup | None = None,
                 bucket_size_mb: float = 25.0, **optimizer_kwargs: Any) -> None:
        groups = _as_groups(params)
        super().__init__(groups, defaults={})
        self.process_group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        self.bucket_bytes = int(bucket_size_mb * MEGABYTE)
        flat = [p for group in self.param_groups for p in group["params"]]
        self.names = names if names is not None else [f"param_{i}" for i in range(len(flat))]
        if len(self.names) != len(flat) or len(set(self.names)) != len(flat):
            raise ValueError(f"names must name each of the {len(flat)} parameters once")
        self.owners = assign_owners(self.names, [p.numel() for p in flat], self.world_size)
        self._owner_of = [self.owners[name] for name in self.names]

        inner_groups, index = [], 0
        self._inner_to_global: list[int] = []
        for group in self.param_groups:
            owned = []
            for p in group["params"]:
                if self._owner_of[index] == self.rank:
                    owned.append(p)
                    self._inner_to_global.append(index)
                index += 1
            inner_groups.append({**group, "params": owned})
        has_any = any(group["params"] for group in inner_groups)
        self.inner = optimizer_cls(inner_groups, **optimizer_kwargs) if has_any else None

    def _sync_hyperparameters(self) -> None:
        if self.inner is None:
            return
        for outer, inner in zip(self.param_groups, self.inner.param_groups):
            inner.update({key: value for key, value in outer.items() if key not in _GROUP_ONLY_KEYS})

    @torch.no_grad()
    def step(self, closure=None):
        """Step the owned parameters, then every owner broadcasts its updated ones."""
        self._sync_hyperparameters()
        loss = self.inner.step(closure) if self.inner is not None else None
        flat = [p for group in self.param_groups for p in group["params"]]
        for owner in range(self.world_size):
            owned = [p for p, rank in zip(flat, self._owner_of) if rank == owner]
            global_owner = dist.get_global_rank(self.process_group, owner) if self.process_group else owner
            broadcast_coalesced(owned, src=global_owner, bucket_bytes=self.bucket_bytes, group=self.process_group)
        return loss

    def _local_state(self) -> dict[int, dict]:
        """This rank's state keyed by global position, on the CPU (so any backend can gather it)."""
        if self.inner is None:
            return {}
        local = self.inner.state_dict()["state"]
        return {self._inner_to_global[i]: {k: v.cpu() if torch.is_tensor(v) else v for k, v in state.items()}
                for i, state in local.items()}

    def state_dict(self) -> dict:
        """Collective. Rank 0: the consolidated state of every rank; other ranks: their own share."""
        shares = gather_to_rank_zero(self._local_state())
        state: dict[int, dict] = {}
        for share in shares if shares is not None else [self._local_state()]:
            state.update(share)
        param_groups, index = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            param_groups.append({**{k: v for k, v in group.items() if k != "params"},
                                 "params": list(range(index, index + count))})
            index += count
        return {"state": state, "param_groups": param_groups, "param_names": list(self.names)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a consolidated state (from this class on any world size, or the plain optimizer)."""
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"saved optimizer has {len(saved_groups)} parameter groups, this one {len(self.param_groups)}")
        saved_names = state_dict.get("param_names")
        if saved_names is not None and list(saved_names) != self.names:
            raise ValueError("saved optimizer state names other parameters than this optimizer holds")
        for outer, saved in zip(self.param_groups, saved_groups):
            if len(saved["params"]) != len(outer["params"]):
                raise ValueError("saved optimizer groups hold other numbers of parameters than this one")
            outer.update({k: v for k, v in saved.items() if k not in _GROUP_ONLY_KEYS})
        if self.inner is None:
            return
        global_ids = [pid for group in saved_groups for pid in group["params"]]
        inner_state = {inner: state_dict["state"][global_ids[g]]
                       for inner, g in enumerate(self._inner_to_global) if global_ids[g] in state_dict["state"]}
        inner_groups, start = [], 0
        for outer, inner_group in zip(self.param_groups, self.inner.param_groups):
            count = len(inner_group["params"])
            inner_groups.append({**{k: v for k, v in outer.items() if k != "params"},
                                 "params": list(range(start, start + count))})
            start += count
        self.inner.load_state_dict({"state": inner_state, "param_groups": inner_groups})


def named_trainable(module: nn.Module, groups: list[dict]) -> list[str]:
    """The names of the parameters in `groups`, in group order (for `names=`)."""
    by_id = {id(p): name for name, p in module.named_parameters()}
    return [by_id[id(p)] for group in groups for p in group["params"]]
