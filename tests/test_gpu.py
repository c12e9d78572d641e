"""CUDA paths: bf16 autocast training with fp32 master weights, CUDA matching the CPU, and a
training step that never waits for the device.

Marked `gpu`: skipped on machines without CUDA (every CPU-only CI run)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_train_fixtures import tiny_config

from config.schemas import ModelConfig, OptimizerConfig
from diffusionlm.diffusion.forward_process import NoiseGenerators
from diffusionlm.inference.generate import generate
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.training.grad_sync import LocalGradSync
from diffusionlm.training.loop import StepSettings, train_step
from diffusionlm.training.objective import DiffusionObjective
from diffusionlm.training.optim import build_optimizer
from diffusionlm.training.trainer import build_trainer, run_training

pytestmark = pytest.mark.gpu


def test_bf16_training_on_cuda_keeps_fp32_master_weights_and_learns(tmp_path):
    config = tiny_config(tmp_path, training={"device": "cuda", "dtype": "bfloat16", "max_train_iteration": 40,
                                             "val_freq_iteration": 40, "ckpting_save_iter": 40})
    trainer = build_trainer(config)
    before = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    result = run_training(trainer)
    after = trainer.validator.evaluate(trainer.model)["metrics.val_loss"]
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in trainer.model.parameters())
    assert result.final_checkpoint is not None
    assert after < before


def test_cuda_forward_matches_cpu_in_fp32_and_greedy_generation_agrees():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context_length=64, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                         mask_token_id=63, eot_token_id=62)
    cpu_model = TransformerLM(config).eval()
    cuda_model = TransformerLM(config).cuda().eval()
    cuda_model.load_state_dict(cpu_model.state_dict())
    ids = torch.randint(0, 62, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(cuda_model(ids.cuda()).cpu(), cpu_model(ids), atol=1e-4, rtol=1e-4)
    prompt = ids[:1, :8]
    kwargs = dict(steps=16, gen_length=32, block_length=16, mask_id=63, vocab_limit=63)
    on_cpu = generate(cpu_model, prompt, **kwargs).tokens
    on_cuda = generate(cuda_model, prompt.cuda(), **kwargs).tokens.cpu()
    assert (on_cpu == on_cuda).float().mean() > 0.9  # argmax near-ties may flip between kernels


@pytest.mark.parametrize("kv_cache", ["none", "dual"])
def test_cuda_graph_decode_steps_give_the_eager_tokens_at_batch_1(kv_cache):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context_length=64, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                         mask_token_id=63, eot_token_id=62)
    model = TransformerLM(config).cuda().eval()
    prompt = torch.randint(0, 62, (1, 8), device="cuda")
    kwargs = dict(steps=16, gen_length=32, block_length=16, mask_id=63, vocab_limit=63, kv_cache=kv_cache,
                  threshold=0.3)
    eager = generate(model, prompt, **kwargs)
    for _ in range(3):  # the first calls warm up and capture; the later ones replay the graphs
        graphed = generate(model, prompt, compile=True, **kwargs)
        assert torch.equal(graphed.tokens, eager.tokens) and graphed.nfe == eager.nfe


def test_a_training_step_makes_no_host_sync_on_cuda():
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=64, context_length=32, d_model=32, num_layers=2, num_heads=4, d_ff=64,
                         mask_token_id=63, eot_token_id=62)
    device = torch.device("cuda")
    model = TransformerLM(config).to(device)
    optimizer_cfg = OptimizerConfig()
    optimizer = build_optimizer(model, optimizer_cfg)
    batch = torch.randint(0, 62, (4, 32)).pin_memory()
    settings = StepSettings(device=device, grad_accum_steps=2, optimizer_cfg=optimizer_cfg,
                            autocast=contextlib.nullcontext)
    objective = DiffusionObjective(mask_token_id=63, noise_epsilon=1e-3, random_trunc_prob=0.0, antithetic=True)
    noise = NoiseGenerators.seeded(0, device)

    def step(schedule_step: int) -> None:
        train_step(model, optimizer, lambda: batch, objective=objective, noise_generator=noise,
                   grad_sync=LocalGradSync(), settings=settings, schedule_step=schedule_step)

    step(0)  # first step: lazy optimizer state, allocator warm-up
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
