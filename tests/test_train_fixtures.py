"""Builders shared by the training and checkpoint tests (this module holds no tests itself).

The tiny config trains in a second or two on the built-in corpus; its special ids are read
from the shipped tokenizer so the tests follow it if it is regenerated.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import tomli_w

from config.io import validate_config
from config.train import TrainConfig
from diffusionlm.tokenizer.io import load_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]


def builtin_special_ids() -> tuple[int, int, int]:
    """(vocab_size, eot id, mask id) of the shipped tokenizer."""
    tokenizer = load_tokenizer()
    return tokenizer.vocab_size, tokenizer.special_tokens["<|endoftext|>"], tokenizer.special_tokens["<|mask|>"]


def tiny_config_dict(runs_path: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A raw TrainConfig dict for a ~100k-parameter model; `sections` update single keys per section."""
    vocab_size, eot, mask = builtin_special_ids()
    data = {
        "model": {"vocab_size": vocab_size, "context_length": 32, "d_model": 32, "num_layers": 2, "num_heads": 2,
                  "d_ff": 64, "mask_token_id": mask, "eot_token_id": eot},
        "optimizer": {"max_learning_rate": 3e-3, "min_learning_rate": 3e-4, "warmup_iters": 2,
                      "cosine_cycle_iters": 40},
        "training": {"device": "cpu", "batch_size": 4, "max_train_iteration": 12, "val_freq_iteration": 6,
                     "ckpting_save_iter": 4, "max_val_iteration": 1, "sample_at_end": False},
        "data": {"shuffle_buffer_size": 16},
        "logging": {"run_name": "tiny", "log_every": 2},
        "checkpoint": {"runs_path": str(runs_path), "keep_last_n": 2},
    }
    data = copy.deepcopy(data)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return data


def tiny_config(runs_path: Path, **sections: dict[str, Any]) -> TrainConfig:
    return validate_config(TrainConfig, tiny_config_dict(runs_path, **sections), "tiny config")


def write_tiny_toml(path: Path, runs_path: Path, **sections: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(tiny_config_dict(runs_path, **sections)))
    return path
