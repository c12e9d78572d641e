"""Data-parallel step time: custom DDP vs torch DDP vs one process, 2 gloo ranks on the CPU.

    uv run python -m benchmarking.bench_ddp [--rounds 5] [--steps 2] [--d-model 256]

Same model and global batch everywhere: one process trains on batch 8 with 2 threads; each of
the 2 ranks trains on batch 4 with 1 thread (the machine's cores split between them). Every
variant runs the trainer's own `loop.train_step` (masked-diffusion loss, AdamW, clipping),
through `parallelize` with `[ddp]` set per row, optimizer state unsharded so the rows compare
the gradient synchronisation alone. Rounds alternate the variants so background load hits all
alike; the table shows the median step time. "exposed comm" is the time `finish()` waits for
all-reduces still in flight after backward: what bucketing failed to overlap.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from config.schemas import DDPConfig, ModelConfig, OptimizerConfig
from ddp.launch import free_port
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.loop import StepSettings, train_step
from diffusionlm.training.objective import DiffusionObjective
from diffusionlm.training.parallelize import parallelize

GLOBAL_BATCH, WORLD_SIZE = 8, 2
ONE_BUCKET_MB = 1e6
VARIANTS = {  # name -> [ddp] settings
    "custom, 1 MB buckets": DDPConfig(impl="custom", bucket_size_mb=1, shard_optimizer_state=False),
    "custom, 25 MB buckets": DDPConfig(impl="custom", bucket_size_mb=25, shard_optimizer_state=False),
    "custom, one bucket": DDPConfig(impl="custom", bucket_size_mb=ONE_BUCKET_MB, shard_optimizer_state=False),
    "torch DDP, 25 MB buckets": DDPConfig(impl="torch", bucket_size_mb=25, shard_optimizer_state=False),
}


def model_config(d_model: int) -> ModelConfig:
    return ModelConfig(vocab_size=4096, context_length=256, d_model=d_model, num_layers=4, num_heads=4,
                       d_ff=704 * d_model // 256, mask_token_id=4095, eot_token_id=4094)


class _TimedFinish:
    """GradSync that records how long `finish()` waits."""

    def __init__(self, inner) -> None:
        self.inner, self.waits = inner, []

    def no_sync(self):
        return self.inner.no_sync()

    def finish(self) -> None:
        start = time.perf_counter()
        self.inner.finish()
        self.waits.append(time.perf_counter() - start)


def _runner(ddp_cfg: DDPConfig | None, config: ModelConfig, batch: int, rank: int):
    torch.manual_seed(0)
    model = TransformerLM(config)
    optimizer_cfg = OptimizerConfig(max_learning_rate=3e-4, warmup_iters=0, cosine_cycle_iters=1000)
    parallel = parallelize(model, optimizer_cfg, ddp_cfg or DDPConfig())
    grad_sync = _TimedFinish(parallel.grad_sync)
    settings = StepSettings(device=torch.device("cpu"), grad_accum_steps=1, optimizer_cfg=optimizer_cfg,
                            autocast=contextlib.nullcontext, clip_grad_norm=parallel.clip_grad_norm)
    objective = DiffusionObjective(mask_token_id=config.mask_token_id, noise_epsilon=1e-3, random_trunc_prob=0.0,
                                   antithetic=True, mask_rate_floor=0.0, mask_rate_ceiling=1.0,
                                   weighting="elbo")
    data = torch.Generator().manual_seed(rank)
    noise = torch.Generator().manual_seed(100 + rank)

    def step() -> None:
        x0 = torch.randint(0, config.vocab_size - 2, (batch, config.context_length), generator=data)
        train_step(parallel.model, parallel.optimizer, lambda: x0, objective=objective, noise_generator=noise,
                   grad_sync=grad_sync, settings=settings, schedule_step=0)
    return step, grad_sync


def _time(step, steps: int, synchronise: bool) -> float:
    if synchronise:
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if synchronise:
        dist.barrier()
    return (time.perf_counter() - start) / steps


def _rank_worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    config = model_config(args.d_model)
    runners = {name: _runner(cfg, config, GLOBAL_BATCH // WORLD_SIZE, rank) for name, cfg in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in runners}
    for name, (step, _) in runners.items():
        _time(step, args.warmup, synchronise=True)
    for name, (_, sync) in runners.items():
        sync.waits.clear()
    for _ in range(args.rounds):
        for name, (step, _) in runners.items():
            times[name].append(_time(step, args.steps, synchronise=True))
    if rank == 0:
        torch.save({"times": times, "waits": {n: s.waits for n, (_, s) in runners.items()}}, out)
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--d-model", type=int, default=256)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "ranks.pt")
        mp.start_processes(_rank_worker, args=(free_port(), args, out), nprocs=WORLD_SIZE, start_method="spawn")
        ranks = torch.load(out, weights_only=True)
    torch.set_num_threads(WORLD_SIZE)
    single, _ = _runner(None, model_config(args.d_model), GLOBAL_BATCH, 0)
    _time(single, args.warmup, synchronise=False)
    single_times = [_time(single, args.steps, synchronise=False) for _ in range(args.rounds)]

    params = sum(p.numel() for p in TransformerLM(model_config(args.d_model)).parameters())
    torch_ms = statistics.median(ranks["times"]["torch DDP, 25 MB buckets"]) * 1e3
    print(f"model {params / 1e6:.1f}M params ({params * 4 / 2**20:.0f} MB of fp32 gradients), global batch "
          f"{GLOBAL_BATCH} x {model_config(args.d_model).context_length}, {WORLD_SIZE} gloo ranks x 1 thread vs "
          f"1 process x {WORLD_SIZE} threads; load average {os.getloadavg()[0]:.1f}")
    print("| variant | step ms (median) | vs torch DDP | exposed comm ms (median) |\n|---|---:|---:|---:|")
    print(f"| one process, batch {GLOBAL_BATCH} | {statistics.median(single_times) * 1e3:.0f} | | |")
    for name in VARIANTS:
        ms = statistics.median(ranks["times"][name]) * 1e3
        waits = ranks["waits"][name]
        exposed = f"{statistics.median(waits) * 1e3:.1f}" if not name.startswith("torch") else "n/a (inside backward)"
        print(f"| {name} | {ms:.0f} | {ms / torch_ms:.2f}x | {exposed} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
