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

Integrity: a checkpoint is a zip archive in which `torch.save` stores a CRC-32 with every
record (each tensor's bytes, the pickled structure). `torch.load` does not check them, so a
bit flipped on disk inside a tensor would load silently; `load_checkpoint` verifies them all
first.

Resume policy: if a checkpoint cannot be read (unreadable, truncated, checksum mismatch),
loading stops with an InputError naming it and the newest good checkpoint beside it to pass
explicitly. Nothing is skipped silently and nothing is deleted: the user decides. The temp
files of saves a killed run never finished are removed when the run starts again
(`remove_unfinished_saves`).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from diffusionlm.errors import InputError
from diffusionlm.utils.atomic import atomic_open, remove_temp_files
from diffusionlm.utils.run_layout import CHECKPOINT_DIRNAME, checkpoint_path, checkpoint_step, list_checkpoints

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "step", "model", "optimizer", "scheduler_step", "rng", "data", "config", "metrics")


def remove_unfinished_saves(run_dir: str | Path) -> list[Path]:
    """Delete the temp files that saves interrupted by a kill left in the run's checkpoint folder.

    Call it only while no other process saves into this run (at the start of a run, on rank 0).
    """
    return remove_temp_files(Path(run_dir) / CHECKPOINT_DIRNAME, "step_*.pt")


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


class _Unreadable(Exception):
    """Why a checkpoint file cannot be used; `load_checkpoint` adds the file and the way out."""


def _check_archive(path: Path) -> None:
    """Raise `_Unreadable` unless `path` is a complete zip archive whose every record matches its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise _Unreadable(f"corrupt or truncated checkpoint (not a complete archive: {err})") from None
    if damaged is not None:
        raise _Unreadable(f"corrupt checkpoint: checksum mismatch in record {damaged!r} (its bytes changed after "
                          f"it was written)")


def _read(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)` of a verified archive, its errors reworded. PyTorch's own
    message for a file holding arbitrary objects advises retrying with `weights_only=False`,
    which would run whatever code the file carries: that advice is never passed on."""
    _check_archive(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(err))
        raise _Unreadable("refused: the file holds Python objects that are not tensors or plain data"
                          + (f" ({blocked.group(1)})" if blocked else "") + ", which are never unpickled") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and EOF errors all mean the same thing here
        detail = next((line for line in str(err).splitlines() if line.strip() and "weights_only" not in line),
                      "no detail")
        raise _Unreadable(f"corrupt or truncated checkpoint ({type(err).__name__}: {detail})") from None


def _newest_good_beside(path: Path) -> str:
    """Where to go instead of the unreadable `path`: the newest other checkpoint of its run whose archive verifies."""
    beside = list_checkpoints(path.parent.parent) if path.parent.name == CHECKPOINT_DIRNAME else []
    for other in reversed(beside):
        if other.resolve() == path.resolve():
            continue
        try:
            _check_archive(other)
        except _Unreadable:
            continue
        return f"; the newest good checkpoint is {other} (pass it explicitly: --resume {other})"
    return f"; there is no other good checkpoint in {path.parent}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint, its checksums verified, with `weights_only=True`. An unreadable,
    truncated or corrupted file is an InputError naming it and the newest good one beside it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        checkpoint = _read(path, map_location)
    except _Unreadable as err:
        raise InputError(f"{path}: {err}{_newest_good_beside(path)}") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED_KEYS):
        raise InputError(f"{path}: not a diffusionlm training checkpoint (missing keys)")
    if checkpoint["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format_version {checkpoint['format_version']} is not supported "
                         f"(expected {FORMAT_VERSION})")
    return checkpoint


def load_latest_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The newest checkpoint of a run. If it is unreadable, the error names the newest good one to use instead."""
    candidates = list_checkpoints(run_dir)
    if not candidates:
        raise InputError(f"{Path(run_dir) / CHECKPOINT_DIRNAME}: no checkpoint to resume from")
    return candidates[-1], load_checkpoint(candidates[-1], map_location)


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

    def __init__(self, run_dir: Path, keep_last_n: int, config: dict[str, Any], rank: int = 0,
                 resumed_from: Path | None = None) -> None:
        self.run_dir, self.keep_last_n, self.config, self.rank = run_dir, keep_last_n, config, rank
        # The newest checkpoint this run stands on: the one it resumed from, then each one it
        # writes (files past a resume point are an abandoned continuation, never "last").
        self.last_saved: Path | None = resumed_from

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
