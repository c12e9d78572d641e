"""User-supplied paths: reading text files and checking output folders, with one-line errors
that name the file or the config field."""

from __future__ import annotations

import tempfile
from pathlib import Path

from diffusionlm.errors import InputError


def read_user_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of `path`; a missing, unreadable or non-UTF-8 file is an `InputError`
    saying which `what` file (e.g. "config", "vocab") is at fault."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: {what} file not found") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{path}: {what} file is not valid UTF-8 ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read {what} file ({err.strerror})") from None


def check_output_dir(path: str | Path, field: str) -> None:
    """InputError naming `field` unless `path` is a folder this process can create files in, or
    can be created: checked before any work, so a run never fails at its first save.

    Nothing is created. The test is a real temporary file in `path` or, when `path` does not
    exist yet, in its nearest existing parent: permission bits alone would not say (root
    ignores them, a read-only mount does not show in them).
    """
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise InputError(f"{field}: {path} {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        what = f"{path} is not writable" if existing == path else f"cannot create {path}: {existing} is not writable"
        raise InputError(f"{field}: {what} ({err.strerror})") from None
