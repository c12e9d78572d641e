"""Export trained weights for inference and sharing: `model.safetensors` + `config.json`.

safetensors holds tensors only (no pickle, so loading it cannot execute code) and maps
straight into memory; `config.json` carries the `[model]` section needed to rebuild the
architecture around the weights.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save
from torch import nn

from config.schemas import ModelConfig
from diffusionlm.utils.atomic import atomic_write_bytes, atomic_write_text
from diffusionlm.utils.run_layout import EXPORT_CONFIG_FILENAME, EXPORT_WEIGHTS_FILENAME

EXPORT_FORMAT_VERSION = 1


def export_safetensors(model: nn.Module, model_config: ModelConfig, out_dir: str | Path) -> Path:
    """Write `out_dir/model.safetensors` and `out_dir/config.json` atomically; returns out_dir."""
    out_dir = Path(out_dir)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    atomic_write_bytes(out_dir / EXPORT_WEIGHTS_FILENAME, save(tensors, metadata={"format": "pt"}))
    config = {"model": model_config.model_dump(mode="json"), "format_version": EXPORT_FORMAT_VERSION}
    atomic_write_text(out_dir / EXPORT_CONFIG_FILENAME, json.dumps(config, indent=2) + "\n")
    return out_dir
