"""Atomic writes: the old file survives a failed write, and no temporary file is left behind."""

from __future__ import annotations

import os
import stat

import pytest

from diffusionlm.utils.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def test_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["a.txt"]


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write("half-writ")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "good"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_written_files_get_umask_permissions_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
