"""Shared pieces of the serving tests: a tiny saved model and a live uvicorn server on a free
127.0.0.1 port, run in a thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from config.schemas import ModelConfig
from config.serve import ServeConfig
from diffusionlm.inference.predictor import Predictor
from diffusionlm.models.transformer import TransformerLM
from diffusionlm.serving.app import create_app
from diffusionlm.serving.listen import BackgroundServer
from diffusionlm.tokenizer.io import load_tokenizer
from diffusionlm.training.export import export_safetensors

BUILTIN = load_tokenizer()
MODEL = dict(vocab_size=-(-BUILTIN.vocab_size // 64) * 64, context_length=96, d_model=32, num_layers=1, num_heads=2,
             d_ff=64, mask_token_id=BUILTIN.special_tokens["<|mask|>"],
             eot_token_id=BUILTIN.special_tokens["<|endoftext|>"])
MODEL_NAME = "tiny"
TIMEOUT_S = 60  # every wait in these tests is bounded by this


def write_export(directory: Path) -> Path:
    """A random-weight model saved as a safetensors export. Its LM head is scaled up so the
    distributions are peaked: greedy choices and confidence rankings have clear gaps, not
    float-rounding ties that a batched forward might order differently."""
    torch.manual_seed(0)
    config = ModelConfig(**MODEL)
    model = TransformerLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(0.4 / model.lm_head.init_std)
    export_safetensors(model, config, directory)
    return directory


def serve_config(export_dir: Path, **server) -> ServeConfig:
    return ServeConfig.model_validate({
        "server": {"model_name": MODEL_NAME, "max_wait_ms": 50} | server,
        "inference": {"checkpoint": str(export_dir), "device": "cpu", "steps": 8, "block_length": 8},
    })


class LiveServer(BackgroundServer):
    """`create_app(config, load)` served from a thread."""

    def __init__(self, config: ServeConfig, load: Callable[[], Predictor] | None = None) -> None:
        super().__init__(create_app(config, load), timeout_s=TIMEOUT_S)

    @property
    def state(self):
        return self.app.state.server

    def wait_ready(self) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while self.state.predictor is None:
            if time.monotonic() > deadline or self.state.load_error is not None:
                raise RuntimeError(f"the model did not load: {self.state.load_error}")
            time.sleep(0.02)


def metric(text: str, name: str) -> float:
    """The value of one sample line of Prometheus text (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0
