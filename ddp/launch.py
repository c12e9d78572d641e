"""A local launcher: start `nproc` copies of a command as the ranks of one run, like
`torchrun --standalone --nproc-per-node N`, for when torchrun is not used.

Each worker gets torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
MASTER_ADDR, MASTER_PORT on a free loopback port) and, unless OMP_NUM_THREADS is exported, an
equal share of the usable cores as its OMP_NUM_THREADS: each rank would otherwise default to all
of them, and N ranks x all cores oversubscribe the CPU. If a worker fails, the others are given
`grace_s` to notice (their collectives time out or see the closed connection) and are then
terminated, so the launcher never waits on a hung rank. The exit code is the first failure's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from diffusionlm.utils.threads import default_num_threads

POLL_S = 0.2


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def worker_env(rank: int, world_size: int, port: int, host: str = "127.0.0.1") -> dict[str, str]:
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, default_num_threads() // world_size))
    return {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size), "MASTER_ADDR": host, "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": threads}


def launch(command: list[str], nproc: int, grace_s: float) -> int:
    """Run `command` as ranks 0..nproc-1 and return 0 if all succeed, else the first failure's code."""
    port = free_port()
    workers = [subprocess.Popen(command, env=worker_env(rank, nproc, port)) for rank in range(nproc)]
    first_failure: int | None = None
    deadline: float | None = None
    try:
        while any(w.poll() is None for w in workers):
            for worker in workers:
                code = worker.poll()
                if code not in (None, 0) and first_failure is None:
                    first_failure, deadline = code, time.monotonic() + grace_s
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGINT)
        first_failure = 130
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    if first_failure is None:
        first_failure = next((w.returncode for w in workers if w.returncode != 0), 0)
    return first_failure
