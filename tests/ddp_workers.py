"""Multi-process helpers for the data-parallel tests (this module holds no tests itself).

`run_ranks` starts real gloo ranks on 127.0.0.1 with torch.multiprocessing (spawn) and enforces a
wall-clock limit; the workers below write what they observed to files the tests then check.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from config.schemas import DDPConfig, ModelConfig, OptimizerConfig
from ddp.ddp import DDP
from ddp.launch import free_port
from ddp.utils import all_reduce_mean, all_reduce_mean_metrics, gather_to_rank_zero
from diffusionlm.training.loop import StepSettings, train_step
from diffusionlm.training.objective import DiffusionObjective, ObjectiveOutput
from diffusionlm.training.parallelize import parallelize
from diffusionlm.training.rng import rank_seed

WORLD_SIZE = 2
MODEL = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=2, d_ff=64,
                    mask_token_id=63, eot_token_id=62)
GLOBAL_BATCH, STEPS, ACCUM = 4, 3, 2
OBJECTIVE = DiffusionObjective(mask_token_id=MODEL.mask_token_id, noise_epsilon=1e-3, random_trunc_prob=0.0,
                               antithetic=False, mask_rate_floor=0.0, mask_rate_ceiling=1.0,
                               weighting="elbo")


@dataclass(frozen=True)
class Scenario:
    impl: str
    optimizer_name: str
    shard: bool = True
    bucket_size_mb: float = 0.01  # ~10 KB: several buckets even for the tiny model


SCENARIOS = {
    "custom_adamw": Scenario("custom", "adamw", shard=False),
    "custom_sharded_adamw": Scenario("custom", "adamw"),
    "custom_sharded_muon": Scenario("custom", "muon"),
    "custom_one_bucket_adamw": Scenario("custom", "adamw", shard=False, bucket_size_mb=1000.0),
    "torch_adamw": Scenario("torch", "adamw"),
    "fsdp2_adamw": Scenario("fsdp2", "adamw"),
}


def run_ranks(worker, args: tuple, wall_s: float, world_size: int = WORLD_SIZE) -> None:
    """Run worker(rank, world_size, port, *args) on `world_size` spawned processes; fail the
    test (after killing them) if they take longer than `wall_s` or any of them fails. Tests
    using it take the `loopback` fixture, which skips them where 127.0.0.1 is unusable."""
    port = free_port()
    context = mp.start_processes(_bootstrap, args=(world_size, port, worker, args), nprocs=world_size,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + wall_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"{worker.__name__} ranks still running after the {wall_s:.0f}s wall limit")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _bootstrap(rank: int, world_size: int, port: int, worker, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        worker(rank, world_size, port, *args)
    finally:
        dist.destroy_process_group()


def optimizer_config(name: str) -> OptimizerConfig:
    """Adam divides by the gradient's own scale, so an entry whose micro-batch contributions
    nearly cancel turns the ~1e-7 relative difference of a different summation order (ranks
    vs one process) into an O(lr) update difference; eps = 1e-6 and lr = 1e-3 keep such
    entries well-conditioned so that 1e-6 checks the synchronisation, not fp32 rounding."""
    adam = {"max_learning_rate": 1e-3, "eps": 1e-6}
    return OptimizerConfig.model_validate({
        "optimizer_name": name, **adam, "min_learning_rate": 1e-4, "warmup_iters": 1,
        "cosine_cycle_iters": 10, "weight_decay": 0.1, "grad_clip_max_l2_norm": 0.5,
        "muon": {"hidden": {"ns_dtype": "float32", "max_learning_rate": 5e-3}, "head": adam, "embed": adam,
                 "scalar": adam}})


def global_batches() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 62, (GLOBAL_BATCH, MODEL.context_length), generator=generator)
            for _ in range(STEPS * ACCUM)]


def noise_generators(world_size: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(rank_seed(0, rank)) for rank in range(world_size)]


class HalvesObjective:
    """Single-process reference: each half of the global batch gets the noise of the rank that
    would hold it; the loss is the mean of the halves (what DDP's gradient average computes)."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    def __call__(self, model, x0, _generator) -> ObjectiveOutput:
        outs = [OBJECTIVE(model, part, g) for part, g in zip(x0.chunk(len(self.generators)), self.generators)]
        return ObjectiveOutput(sum(o.loss for o in outs) / len(outs), sum(o.mask_ratio for o in outs) / len(outs))


def train_tiny(scenario: Scenario, *, rank: int, world_size: int, distributed: bool):
    """STEPS optimizer steps of ACCUM micro-steps on the tiny model; returns (parallel, losses)."""
    from diffusionlm.models.transformer import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(MODEL)
    cfg = optimizer_config(scenario.optimizer_name)
    parallel = parallelize(model, cfg, DDPConfig(impl=scenario.impl, shard_optimizer_state=scenario.shard,
                                                 bucket_size_mb=scenario.bucket_size_mb))
    settings = StepSettings(device=torch.device("cpu"), grad_accum_steps=ACCUM, optimizer_cfg=cfg,
                            autocast=contextlib.nullcontext, clip_grad_norm=parallel.clip_grad_norm,
                            global_mean=all_reduce_mean)
    generators = noise_generators(world_size)
    if distributed:
        batches = iter([b.chunk(world_size)[rank] for b in global_batches()])
        objective, generator = OBJECTIVE, generators[rank]
    else:
        batches = iter(global_batches())
        objective, generator = HalvesObjective(generators), None
    losses = []
    for step in range(STEPS):
        result = train_step(parallel.model, parallel.optimizer, lambda: next(batches), objective=objective,
                            noise_generator=generator, grad_sync=parallel.grad_sync, settings=settings,
                            schedule_step=step)
        losses.append(float(result.loss))
    return parallel, losses


def equivalence_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    """Every scenario on 2 ranks; rank 0 saves the full parameters, losses and optimizer state."""
    for name, scenario in SCENARIOS.items():
        parallel, losses = train_tiny(scenario, rank=rank, world_size=world_size, distributed=True)
        params, optimizer_state = parallel.full_model_state(), parallel.optimizer_state()
        if rank == 0:
            torch.save({"params": params, "losses": losses, "optimizer": optimizer_state}, Path(out_dir) / f"{name}.pt")
    _unused_and_frozen(rank, Path(out_dir))
    metrics = all_reduce_mean_metrics({"metrics.loss": float(rank), "note": "kept"})
    if rank == 0:
        torch.save(metrics, Path(out_dir) / "metrics.pt")


class _PartlyUsed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.unused = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.used(self.frozen(x))


def _unused_and_frozen(rank: int, out_dir: Path) -> None:
    """One rank uses a parameter the other does not: finishing must neither hang nor drop it."""
    torch.manual_seed(0)
    wrapped = DDP(_PartlyUsed(), bucket_size_mb=0.0001)
    x = torch.full((2, 4), float(rank + 1))
    out = wrapped(x).sum()
    if rank == 1:
        out = out + wrapped.module.unused(x).sum()
    out.backward()
    wrapped.finish_gradient_synchronization()
    module = wrapped.module
    if rank == 0:
        torch.save({"used": module.used.weight.grad.clone(), "unused": module.unused.weight.grad.clone(),
                    "frozen_grad_is_none": module.frozen.weight.grad is None,
                    "state_keys": sorted(wrapped.state_dict())}, out_dir / "unused.pt")


def trainer_worker(rank: int, world_size: int, port: int, runs_path: str, config_dict: dict) -> None:
    """Per-rank streams; 2-rank runs with checkpoints (custom, then briefly torch and fsdp2) and
    their resumption from the middle."""
    from config.io import validate_config
    from config.train import TrainConfig
    from diffusionlm.training.trainer import build_trainer

    config = validate_config(TrainConfig, config_dict, "ddp test config")
    runs = Path(runs_path)
    probe_config = config.model_copy(update={"logging": config.logging.model_copy(update={"run_name": "probe"}),
                                             "training": config.training.model_copy(update={"skip_validation": True})})
    probe = build_trainer(probe_config, rank=rank, world_size=world_size)
    observed = gather_to_rank_zero({"batch": next(probe.train_batches),
                                    "noise": torch.rand(16, generator=probe.noise_generator.host)})
    probe.train_batches.close()
    if rank == 0:
        torch.save(observed, runs / "streams.pt")

    _run_then_resume(config, runs, "ddp", rank, world_size)
    for impl, optimizer_name in (("torch", "muon"), ("fsdp2", "adamw")):  # their checkpoint paths, briefly
        short = config.model_copy(update={
            "ddp": config.ddp.model_copy(update={"impl": impl}),
            "optimizer": config.optimizer.model_copy(update={"optimizer_name": optimizer_name}),
            "training": config.training.model_copy(update={"skip_validation": True, "grad_accum_steps": 1,
                                                           "max_train_iteration": 2, "ckpting_save_iter": 1}),
            "logging": config.logging.model_copy(update={"run_name": impl})})
        _run_then_resume(short, runs, impl, rank, world_size)


def _run_then_resume(config, runs: Path, name: str, rank: int, world_size: int) -> None:
    """Run `name` to the end, then resume a copy of it from its first checkpoint as `<name>_resumed`."""
    from diffusionlm.training.trainer import build_trainer, run_training

    run_training(build_trainer(config, rank=rank, world_size=world_size))
    resumed = runs / f"{name}_resumed"
    if rank == 0:
        shutil.copytree(runs / name, resumed)
        for path in sorted((resumed / "checkpoints").iterdir())[1:]:
            path.unlink()  # keep only the first checkpoint: the resumed run must write the rest itself
    dist.barrier()
    first = sorted((resumed / "checkpoints").iterdir())[0]
    run_training(build_trainer(config, resume=str(first), rank=rank, world_size=world_size))


def all_workers(rank: int, world_size: int, port: int, out_dir: str, runs_path: str, config_dict: dict) -> None:
    equivalence_worker(rank, world_size, port, out_dir)
    trainer_worker(rank, world_size, port, runs_path, config_dict)
