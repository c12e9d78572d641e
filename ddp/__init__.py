"""Data-parallel training (SPEC §8): `DDP` (bucketed gradient all-reduce overlapping backward),
`OptimizerStateSharding` (ZeRO-1), process-group utilities and the local launcher. The trainer
reaches them through `diffusionlm.training.parallelize`."""

from ddp.ddp import DDP
from ddp.optimizer_state_sharding import OptimizerStateSharding

__all__ = ["DDP", "OptimizerStateSharding"]
