"""Checkpoint files: atomic save, safe load, keep-last-N, and finding what to resume from.

Layout: `<run_dir>/checkpoints/step_00000100.pt`, one file per save, named by the number of
micro-steps done. The newest file is also the final checkpoint of a finished run, so
"latest" is simply the highest step. A file appears under its final name only once it is
complete (temp file + rename), so a run killed mid-save leaves the previous checkpoint as the
newest one.

Contents (all types `torch.load(weights_only=True)` accepts, so an untrusted file cannot run
code): format_version, step, model (state_dict), optimizer ({rank: state_dict}; one entry per
optimizer shard, rank 0 alone in a single process), scheduler_step, rng, data (loader
state), config (the TrainConfig as JSON-able dict), metrics.

Resume policy for `latest`: if the newest checkpoint cannot be read, loading stops with an
InputError naming it and the previous complete checkpoint to pass explicitly. Nothing is
skipped silently and nothing is deleted: the user decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffusionlm.errors import InputError
from diffusionlm.utils.atomic import atomic_open
from diffusionlm.utils.run_layout import CHECKPOINT_DIRNAME, checkpoint_path, checkpoint_step, list_checkpoints

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "step", "model", "optimizer", "scheduler_step", "rng", "data", "config", "metrics")


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write `payload` atomically: the file at `path` is either the old one or the complete new one."""
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def prune_checkpoints(run_dir: str | Path, keep_last_n: int, newest_step: int | None = None) -> list[Path]:
    """Delete all but the `keep_last_n` newest checkpoints at or before `newest_step` (default:
    all of them); returns the deleted paths.

    Files past `newest_step` are left alone: after resuming from an older checkpoint they are
    the abandoned continuation, and ranking them as "newest" would delete the save just made.
    """
    candidates = list_checkpoints(run_dir)
    if newest_step is not None:
        candidates = [p for p in candidates if checkpoint_step(p) <= newest_step]
    doomed = candidates[:-keep_last_n]
    for path in doomed:
        path.unlink()
    return doomed


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; unreadable or incomplete files are InputErrors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - zip, pickle and EOF errors all mean the same thing here
        raise InputError(f"{path}: corrupt or truncated checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise InputError(f"{path}: not a diffusionlm training checkpoint (missing keys)")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format_version {checkpoint['format_version']} is not supported "
                         f"(expected {FORMAT_VERSION})")
    return checkpoint


def load_latest_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The newest checkpoint of a run. If it is unreadable, the error names the previous one to use instead."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise InputError(f"{Path(run_dir) / CHECKPOINT_DIRNAME}: no checkpoint to resume from")
    newest = candidates[-1]
    try:
        return newest, load_checkpoint(newest, map_location)
    except InputError as err:
        hint = (f"; to resume from the previous one pass it explicitly: --resume {candidates[-2]}"
                if len(candidates) > 1 else "; there is no older checkpoint")
        raise InputError(f"{err}{hint}") from None


def resolve_and_load(resume: str, default_run_dir: Path | None,
                     map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """`--resume PATH|latest`: a checkpoint file, a run directory (its newest checkpoint), or
    `latest` (the newest checkpoint of `default_run_dir`, the run directory the config names)."""
    if resume == "latest":
        if default_run_dir is None:
            raise InputError("--resume latest: logging.run_name is unset, so there is no run directory to look in; "
                             "pass the run directory or a checkpoint file instead")
        return load_latest_checkpoint(default_run_dir, map_location)
    path = Path(resume)
    if path.is_dir():
        return load_latest_checkpoint(path, map_location)
    return path, load_checkpoint(path, map_location)


def check_same_model(checkpoint: dict, model_config: dict[str, Any], path: Path) -> None:
    """InputError naming the first `[model]` field where the checkpoint and the config differ."""
    saved = checkpoint["config"].get("model", {})
    for key in sorted(set(saved) | set(model_config)):
        if saved.get(key) != model_config.get(key):
            raise InputError(f"{path}: checkpoint has model.{key} = {saved.get(key)!r} but the config says "
                             f"{model_config.get(key)!r}; a run can only resume with the same model")


def optimizer_shard(checkpoint: dict, rank: int, world_size: int, path: Path) -> dict:
    """This rank's optimizer state from `checkpoint["optimizer"]` ({rank: state_dict})."""
    shards = checkpoint["optimizer"]
    if len(shards) not in (1, world_size) or (len(shards) == world_size and rank not in shards):
        raise InputError(f"{path}: checkpoint holds optimizer state for ranks {sorted(shards)}, "
                         f"this run has world_size {world_size}")
    return shards[rank] if rank in shards else shards[0]


class Checkpointer:
    """Saves a run's checkpoints into `<run_dir>/checkpoints/` and keeps the newest `keep_last_n`.

    Only rank 0 writes; the optimizer state of every rank arrives through `optimizer_shards`.
    """

    def __init__(self, run_dir: Path, keep_last_n: int, config: dict[str, Any], rank: int = 0) -> None:
        self.run_dir, self.keep_last_n, self.config, self.rank = run_dir, keep_last_n, config, rank
        self.last_saved: Path | None = None  # written by this process (a resumed run's older files may be stale)

    def save(self, *, step: int, scheduler_step: int, skipped_steps: int, model_state: dict,
             optimizer_shards: dict[int, dict], rng: dict, data: dict, metrics: dict[str, Any]) -> Path | None:
        """Write `step_<step>.pt` atomically, then prune old ones. The new file is complete on
        disk before any older file is deleted, so a good checkpoint always exists."""
        if self.rank != 0:
            return None
        path = checkpoint_path(self.run_dir, step)
        save_checkpoint(path, {
            "format_version": FORMAT_VERSION, "step": step, "scheduler_step": scheduler_step,
            "skipped_steps": skipped_steps, "model": model_state, "optimizer": optimizer_shards, "rng": rng,
            "data": data, "config": self.config, "metrics": dict(metrics),
        })
        self.last_saved = path
        prune_checkpoints(self.run_dir, self.keep_last_n, newest_step=step)
        return path
