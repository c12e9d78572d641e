"""The on-disk layout of a run directory, named once for training, inference, eval and tools.

    <runs_path>/<run_name>/
        config.toml                  the resolved training config
        tokenizer/                   vocab.json, merges.txt, special_tokens.json
        checkpoints/step_00000100.pt one file per save, named by micro-steps done
        export/                      model.safetensors + config.json

Training writes this layout; inference and evaluation read it. Keeping it here, below both,
means neither has to import the other to find a file.
"""

from __future__ import annotations

import re
from pathlib import Path

RUN_CONFIG_FILENAME = "config.toml"
CHECKPOINT_DIRNAME = "checkpoints"
TOKENIZER_DIRNAME = "tokenizer"
EXPORT_DIRNAME = "export"
EXPORT_WEIGHTS_FILENAME = "model.safetensors"
EXPORT_CONFIG_FILENAME = "config.json"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIRNAME / f"step_{step:08d}.pt"


def checkpoint_step(path: Path) -> int | None:
    """The step number in a `step_<N>.pt` file name, or None for any other name."""
    match = _STEP_FILE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first (temp files of unfinished saves are ignored)."""
    directory = Path(run_dir) / CHECKPOINT_DIRNAME
    if not directory.is_dir():
        return []
    found = [(step, p) for p in directory.iterdir() if (step := checkpoint_step(p)) is not None and p.is_file()]
    return [p for _, p in sorted(found)]


def run_dir_of(checkpoint_file: Path) -> Path:
    """`<run_dir>/checkpoints/step_X.pt` -> `<run_dir>`."""
    return checkpoint_file.resolve().parent.parent
