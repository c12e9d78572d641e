"""Atomic file writes: a reader never sees a half-written file, and a crash never destroys
the previous version.

The pattern is write to a temporary file in the same directory, flush and fsync, then
`os.replace` (atomic on POSIX and Windows when source and target share a filesystem).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


_TEMP_SUFFIX = ".tmp"  # temp files are named .<target name>.<random><suffix>, beside the target


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on clean exit it replaces `path`.

    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp creates the file 0600; give the result the permissions a plain open() would.
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable, so callers may delete older files right after (POSIX only)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def remove_temp_files(directory: str | os.PathLike, name_pattern: str = "*") -> list[Path]:
    """Delete the temp files that `atomic_open` writes left behind for targets in `directory`
    whose names match the glob `name_pattern`; returns them.

    A process killed mid-write never reaches the cleanup in `atomic_open`, so its temp file
    stays. Only call this when no other process may be writing those targets right now.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".{name_pattern}.*{_TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
