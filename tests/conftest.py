"""Shared test fixtures: the optional ../shared/data folder, one torch thread, a folder no one may write in,
loopback networking for multi-process tests, and GPU skipping."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ../shared/data folder beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present beside the checkout")
    return SHARED_DATA


def _can_create_files_in(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.fixture
def one_thread():
    """torch on one CPU thread for the test (tiny models run fastest so, and the suite shares the machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot create files in: a chmod 555 folder or, for root (which
    ignores permission bits), /proc, where the kernel refuses new files to everyone."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        usable = [c for c in (folder, Path("/proc")) if c.is_dir() and not _can_create_files_in(c)]
        if not usable:
            pytest.skip("no folder here refuses new files to this process (root, and no /proc)")
        yield usable[0]
    finally:
        folder.chmod(0o755)


@pytest.fixture(scope="session")
def loopback() -> str:
    """127.0.0.1, once a connection to it has been seen to work; multi-process tests that talk
    over it skip with the reason otherwise (in a fresh network namespace loopback is down and
    their rendezvous would wait for the full timeout)."""
    try:
        with socket.create_server(("127.0.0.1", 0)) as server:
            with socket.create_connection(server.getsockname(), timeout=5):
                pass
    except OSError as err:
        pytest.skip(f"loopback networking (127.0.0.1) is unavailable: {err}")
    return "127.0.0.1"


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
