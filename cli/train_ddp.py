"""Data-parallel training: `diffusionlm-train` on several processes (SPEC §8).

    uv run diffusionlm-train-ddp                                # nproc_per_node local workers
    uv run diffusionlm-train-ddp --set ddp.nproc_per_node=4 --set ddp.impl=torch
    torchrun --nproc-per-node 8 -m cli.train_ddp --config config/resources/train_ddp.toml
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 -m cli.train_ddp --config ...   # on every node

Under torchrun (RANK/WORLD_SIZE set) this process is one rank. Otherwise it launches
`[ddp].nproc_per_node` local workers on a free loopback port and waits for them. gloo on CPU,
nccl on CUDA (one GPU per local rank); `[ddp].timeout_s` bounds every collective, so a rank that
dies makes the others exit non-zero instead of hanging. Only rank 0 logs and writes files.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from cli.train import add_train_arguments, adjust_train_config, dry_run, report_result
from cli.utils import run_cli
from config.train import TrainConfig

# Seconds the launcher gives surviving workers, beyond the collective timeout, to exit on their own.
LAUNCH_GRACE_S = 30.0


def _under_launcher() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _run_rank(config: TrainConfig, args: argparse.Namespace) -> int:
    import torch

    from ddp.utils import env_context, init_distributed, resolve_backend, teardown_distributed
    from diffusionlm.training.trainer import build_trainer, run_training
    from diffusionlm.utils.device import resolve_device

    context = env_context()
    device = resolve_device(config.training.device)
    if device.type == "cuda":
        torch.cuda.set_device(context.local_rank)
    init_distributed(context, resolve_backend(config.ddp.backend, device), config.ddp.timeout_s)
    try:
        result = run_training(build_trainer(config, resume=args.resume, rank=context.rank,
                                            world_size=context.world_size))
        if context.rank == 0:
            report_result(result)
        return 0
    finally:
        teardown_distributed()


def _run(config: TrainConfig, args: argparse.Namespace, *, forwarded: list[str]) -> int:
    if args.dry_run:
        return dry_run(config)
    if _under_launcher():
        return _run_rank(config, args)
    from ddp.launch import launch

    command = [sys.executable, "-m", "cli.train_ddp", *forwarded]
    return launch(command, config.ddp.nproc_per_node, grace_s=config.ddp.timeout_s + LAUNCH_GRACE_S)


def main(argv: list[str] | None = None) -> int:
    forwarded = list(sys.argv[1:] if argv is None else argv)  # the workers get the same arguments
    return run_cli(functools.partial(_run, forwarded=forwarded), TrainConfig, prog="diffusionlm-train-ddp",
                   description=__doc__, default_config="train_ddp.toml", add_arguments=add_train_arguments,
                   adjust_config=adjust_train_config, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
