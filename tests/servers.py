"""Run ASGI apps (palaver, the test upstream) on free loopback ports in background threads."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import uvicorn

from palaver.server import uvicorn_options


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 and a free port; yield its base URL; stop it afterwards."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = getattr(app, "settings", None)
    options = uvicorn_options(settings.server if settings is not None else None)
    if settings is None:  # the test upstream: nothing to drain, stop soon
        options["timeout_graceful_shutdown"] = 2
    config = uvicorn.Config(app, log_level="warning", access_log=False, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    url: str,
    process: subprocess.Popen[Any],
    seconds: float = 20.0,
    output: Callable[[], str] = lambda: "",
) -> None:
    """Wait until the palaver ``process`` serving ``url`` answers ``/health``; fail with
    ``output()`` if it exits first."""
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, output()
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "palaver did not start"
        time.sleep(0.1)
