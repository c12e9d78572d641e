"""Training-step speed: our model + loss + optimizer + loop step against the plain reference.

Both sides train the same shapes with the same masked-diffusion objective and the same
optimizer settings (AdamW, lr 3e-4, betas (0.9, 0.999), weight decay 0.01 on every
parameter, eps 1e-8, clipping at 1.0), in one process on one device. Ours runs through
`loop.train_step`, the function the trainer calls; `compile = true` adds our whole-model
compile (`training.compile = "model"`) and the reference under `torch.compile`. The variants
alternate in rounds, so a burst of background load slows both rather than one.

Reported per variant: median step time, tokens/s, peak memory (CUDA: peak allocated bytes;
CPU: the process's peak resident set while the variant ran, reset through
/proc/self/clear_refs), and the model FLOPs utilisation when the device's peak is known
(`peak_tflops`, or on CUDA looked up by device name), computed by
`diffusionlm.training.throughput`, the same code as the training log's `metrics.mfu`.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from config.bench_train import BenchTrainConfig
from config.schemas import AUTOCAST_PRECISION, NOISE_EPSILON, CompileMode, ModelConfig, OptimizerConfig
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.errors import InputError
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.grad_sync import LocalGradSync
from diffusionlm.training.loop import StepSettings, train_step
from diffusionlm.training.objective import DiffusionObjective
from diffusionlm.training.optim import build_optimizer
from diffusionlm.training.parallelize import compile_model
from diffusionlm.training.throughput import mfu, model_flops_per_token, peak_flops
from diffusionlm.utils.device import autocast_context, resolve_device
from diffusionlm.utils.threads import apply_num_threads

LEARNING_RATE = 3e-4
REFERENCE_ADAMW = {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}
CLIP_NORM = 1.0
def load_reference(path: Path) -> ModuleType:
    """Import the reference script from its path (it is not a package)."""
    if not path.is_file():
        raise InputError(f"reference_path: {path} not found (the reference script ref_bench.py; "
                         f"relative paths start from the current directory)")
    spec = importlib.util.spec_from_file_location("ref_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_ffn_width(d_model: int) -> int:
    """The reference's SwiGLU width: 8/3 * d rounded up to a multiple of 64."""
    return -(-8 * d_model // 3 // 64) * 64


@dataclass
class Variant:
    name: str
    step: Callable[[], None]
    times: list[float] = field(default_factory=list)
    peak_bytes: int = 0


class _PeakMemory:
    """Peak memory while a variant runs: CUDA allocator stats, or the process peak RSS on Linux."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.rss_resettable = not self.cuda and Path("/proc/self/clear_refs").exists()

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.rss_resettable:
            Path("/proc/self/clear_refs").write_text("5")

    def read(self) -> int:
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        if not self.rss_resettable:
            return 0
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


def _reference_variant(name: str, ref: ModuleType, model: torch.nn.Module, x0: torch.Tensor, mask_id: int,
                       cuda: bool, step_model: torch.nn.Module) -> Variant:
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=cuda, **REFERENCE_ADAMW)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda else (lambda: torch.autocast("cpu", enabled=False))

    def step() -> None:  # the reference's own training step, verbatim in behaviour
        with autocast():
            loss = ref.diffusion_loss(step_model, x0, mask_id)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return Variant(name, step)


def _our_variant(name: str, model_cfg: ModelConfig, x0: torch.Tensor, device: torch.device,
                 compile: CompileMode) -> Variant:
    torch.manual_seed(0)
    model = TransformerLM(model_cfg).to(device)
    compile_model(model, compile)
    optimizer_cfg = OptimizerConfig(optimizer_name="adamw", max_learning_rate=LEARNING_RATE,
                                    min_learning_rate=LEARNING_RATE, warmup_iters=0, cosine_cycle_iters=1,
                                    decay_norms_and_embeddings=True, grad_clip_max_l2_norm=CLIP_NORM,
                                    **REFERENCE_ADAMW)
    optimizer = build_optimizer(model, optimizer_cfg)
    objective = DiffusionObjective(mask_token_id=model_cfg.mask_token_id, noise_epsilon=NOISE_EPSILON,
                                   random_trunc_prob=0.0, antithetic=False, mask_rate_floor=0.0, mask_rate_ceiling=1.0,
                                   weighting="elbo")
    settings = StepSettings(device=device, grad_accum_steps=1, optimizer_cfg=optimizer_cfg,
                            autocast=lambda: autocast_context(device, AUTOCAST_PRECISION))
    generator = NoiseGenerators.seeded(0, device)
    grad_sync = LocalGradSync()

    def step() -> None:
        train_step(model, optimizer, lambda: x0, objective=objective, noise_generator=generator,
                   grad_sync=grad_sync, settings=settings, schedule_step=0)
    return Variant(name, step)


def run_bench_train(config: BenchTrainConfig) -> list[dict]:
    """Time every variant; returns one row per variant (also printed as a table by the CLI)."""
    ref = load_reference(config.reference_path)
    device = resolve_device(config.device, field="device")
    cuda = device.type == "cuda"
    apply_num_threads(config.benchmark.num_threads)
    load_before = os.getloadavg()[0]
    preset = config.preset if config.preset != "auto" else ("gpt2-small" if cuda else "cpu-small")
    shape = ref.PRESETS[preset]
    V, d, L, h, T, B = (shape[k] for k in ("vocab", "d_model", "layers", "heads", "ctx", "batch"))
    model_cfg = ModelConfig(vocab_size=V, context_length=T, d_model=d, num_layers=L, num_heads=h,
                            d_ff=reference_ffn_width(d), mask_token_id=V - 1, eot_token_id=V - 2)
    torch.manual_seed(0)
    x0 = torch.randint(0, V - 1, (B, T), device=device)
    torch.manual_seed(0)
    ref_model = ref.Model(V, d, L, h, T).to(device)
    variants = [_reference_variant("reference eager", ref, ref_model, x0, V - 1, cuda, ref_model),
                _our_variant("ours eager", model_cfg, x0, device, compile="off")]
    if config.compile:
        variants += [_reference_variant("reference compiled", ref, ref_model, x0, V - 1, cuda, torch.compile(ref_model)),
                     _our_variant("ours compiled", model_cfg, x0, device, compile="model")]

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    memory = _PeakMemory(device)
    for variant in variants:
        for _ in range(config.benchmark.warmup_steps):
            variant.step()
    for round_index in range(config.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            sync()
            memory.reset()
            for _ in range(config.benchmark.timed_steps):
                start = time.perf_counter()
                variant.step()
                sync()
                variant.times.append(time.perf_counter() - start)
            variant.peak_bytes = max(variant.peak_bytes, memory.read())

    flops = model_flops_per_token(model_cfg)
    baseline = statistics.median(variants[0].times)
    peak = peak_flops(device, config.peak_tflops)
    rows = []
    for variant in variants:
        step_s = statistics.median(variant.times)
        tokens_per_s = B * T / step_s
        row = {"variant": variant.name, "step_ms": step_s * 1e3, "tokens_per_s": tokens_per_s,
               "vs_reference_eager": baseline / step_s, "peak_memory_mib": variant.peak_bytes / 2**20}
        if peak is not None:
            row["mfu"] = mfu(tokens_per_s, flops, peak)
        rows.append(row)
    header = {"device": torch.cuda.get_device_name() if cuda else "cpu", "threads": torch.get_num_threads(),
              "preset": preset, "shape": shape, "flops_per_token": flops, "peak_tflops": peak / 1e12 if peak else None, "torch": torch.__version__,
              "load_avg_1min": f"{load_before:.1f}->{os.getloadavg()[0]:.1f}"}
    return [header, *rows]
