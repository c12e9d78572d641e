"""Reading user-supplied text files with one-line errors that name the file."""

from __future__ import annotations

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
