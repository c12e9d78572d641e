"""Where the server listens: a bound socket, and uvicorn in a background thread (for the
benchmark and the tests, which run clients in the same process)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from diffusionlm.errors import InputError


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); an address that cannot be used is an InputError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise InputError(f"server.host/server.port: cannot listen on {host}:{port} ({err.strerror})") from None
    sock.listen(2048)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


class BackgroundServer:
    """uvicorn serving `app` from a thread on 127.0.0.1 (a free port unless given); `close()`
    stops it and waits (at most `timeout_s`)."""

    def __init__(self, app, *, port: int = 0, timeout_s: float = 60.0) -> None:
        sock = bind("127.0.0.1", port)
        self.url, self.app, self.timeout_s = url_of(sock), app, timeout_s
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.close()
                raise RuntimeError("the server thread did not start")
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
