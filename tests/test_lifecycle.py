"""palaver as a process: stopping it, slow and oversized clients, running out of descriptors,
and keys written with spaces."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import free_port

USER = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": " ".join(f"w{i}" for i in range(40))}]

# Starts palaver with a lower limit of open files (0: unchanged), as `prlimit` would.
LAUNCH = """
import resource, runpy, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
sys.argv = ["palaver", *sys.argv[2:]]
runpy.run_module("palaver", run_name="__main__")
"""
NOISE = ("Traceback", "CancelledError", "Exception in ASGI", "graceful shutdown exceeded")


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def write_config(path: Path, providers: list[dict[str, Any]], **sections: Any) -> Path:
    lines: list[str] = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in table.items())
    for provider in providers:
        lines.append("[[providers]]")
        lines.extend(f"{key} = {_toml(value)}" for key, value in provider.items())
    path.write_text("\n".join(lines) + "\n")
    return path


@contextmanager
def palaver_serve(
    tmp_path: Path,
    providers: list[dict[str, Any]],
    *,
    nofile: int = 0,
    env: dict[str, str] | None = None,
    **sections: Any,
) -> Iterator[Served]:
    """``palaver serve`` in a process of its own, its output in a file."""
    sections.setdefault("conversations", {"backend": "memory"})
    sections.setdefault("cache", {"enabled": False})
    config = write_config(tmp_path / "palaver.toml", providers, **sections)
    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    log = tmp_path / f"palaver-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(nofile), "serve", "--config", str(config)],
            env={**clean, "PORT": str(port), **(env or {})},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Served(process, f"http://127.0.0.1:{port}", port, log)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, served.output()
            try:
                if httpx.get(served.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "palaver did not start"
            time.sleep(0.05)
        yield served
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", "host: palaver"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        head += ["content-type: application/json", f"content-length: {len(body)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _chat(model: str = "m", stream: bool = False, **extra: Any) -> bytes:
    messages = LONG if stream else USER
    body = {"model": model, "messages": messages, "stream": stream, **extra}
    return _request("POST", "/v1/chat/completions", orjson.dumps(body))


def _response(sock: socket.socket) -> tuple[int, bytes]:
    """Read one response with a content-length (or up to the close): status and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError(f"closed without a (whole) response: {data!r}")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while length is None or len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return status, body


def _events(raw: bytes) -> list[bytes]:
    """The SSE events of a raw chunked response, and whether its last chunk came."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            body += b"<end>"
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return [e for e in body.split(b"\n\n") if e]


def _connect(port: int, timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# -- keys written with spaces (issue 8, item 8) ---------------------------------------------


def test_configured_key_with_spaces_is_usable() -> None:
    with run_palaver(server={"api_keys": [" sk-a "]}) as url:
        good = httpx.get(url + "/v1/models", headers={"authorization": "Bearer sk-a"})
        bad = httpx.get(url + "/v1/models", headers={"authorization": "Bearer sk-b"})
    assert good.status_code == 200, good.text
    assert bad.status_code == 401


# -- stopping (item 11) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sig", "workers"),
    [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGTERM, 2)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-2-workers"],
)
def test_stopping_ends_requests_in_flight_cleanly(
    tmp_path: Path, sig: signal.Signals, workers: int
) -> None:
    """Streams in flight end with an error event and [DONE]; requests without an answer yet
    (a slow upstream, a slow upload) get a 503; nothing is stored; no traceback; quick exit."""
    grace = 1.0
    with ExitStack() as stack:
        drip = stack.enter_context(run_upstream("drip"))
        late = stack.enter_context(run_upstream("late"))
        drip.behave(chunk_delay=0.5)
        late.behave(first_byte_delay=30)
        providers = [
            provider_entry(drip, ["drip"], chunk_timeout=30),
            provider_entry(late, ["late"], first_byte_timeout=60),
        ]
        sections: dict[str, Any] = {
            "server": {"shutdown_grace": grace, "workers": workers},
            "conversations": {"backend": "sqlite", "path": str(tmp_path / "c.sqlite3")},
        }
        served = stack.enter_context(palaver_serve(tmp_path, providers, **sections))

        waiting: dict[str, Any] = {}

        def wait_for_answer() -> None:
            with _connect(served.port, timeout=20) as sock:
                sock.sendall(_chat("late"))
                waiting["answer"] = _response(sock)

        waiter = threading.Thread(target=wait_for_answer)
        waiter.start()
        upload = stack.enter_context(_connect(served.port, timeout=20))
        upload.sendall(_chat("late")[:-5])  # the body's last bytes never come
        stream = stack.enter_context(_connect(served.port, timeout=20))
        stream.sendall(_chat("drip", stream=True, conversation="cut-turn"))
        received = b""
        while b"data: " not in received:
            received += stream.recv(65536)
        while len(late.chat_requests) < 1:
            time.sleep(0.01)

        stopped_at = time.monotonic()
        served.process.send_signal(sig)
        while piece := stream.recv(65536):
            received += piece
        cut_after = time.monotonic() - stopped_at
        upload_status, upload_body = _response(upload)
        waiter.join(10)
        served.process.wait(10)
        exited_after = time.monotonic() - stopped_at

    assert grace * 0.8 < cut_after < grace + 1.5
    assert exited_after < grace + 2.5
    events = _events(received)
    assert events[-1] == b"<end>"  # the response completed: it was not cut
    assert events[-2] == b"data: [DONE]"
    error = orjson.loads(events[-3].removeprefix(b"data: "))["error"]
    assert error["code"] == "server_shutting_down"
    assert set(error) == {"message", "type", "param", "code"}
    status, body = waiting["answer"]
    assert status == 503
    assert orjson.loads(body)["error"]["code"] == "server_shutting_down"
    assert upload_status == 503
    assert orjson.loads(upload_body)["error"]["code"] == "server_shutting_down"
    output = served.output()
    assert not [word for word in NOISE if word in output], output
    # Nothing was stored for the turn that was cut.
    with palaver_serve(tmp_path, providers, **sections) as again:
        items = httpx.get(again.url + "/v1/conversations/cut-turn/items")
    assert items.status_code == 404 or items.json()["data"] == [], items.text


def test_stopping_an_idle_server_is_immediate(tmp_path: Path) -> None:
    with palaver_serve(tmp_path, []) as served:
        with _connect(served.port) as idle:  # a kept-alive connection, between requests
            idle.sendall(_request("GET", "/health"))
            assert _response(idle)[0] == 200
            stopped_at = time.monotonic()
            served.process.send_signal(signal.SIGTERM)
            served.process.wait(10)
        assert time.monotonic() - stopped_at < 1.5
    assert "Traceback" not in served.output()


# -- out of file descriptors (item 10) ------------------------------------------------------


def test_out_of_file_descriptors_is_a_local_503_and_no_provider_cools(tmp_path: Path) -> None:
    limit = 64
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        palaver_serve(
            tmp_path, [provider_entry(a, ["m"]), provider_entry(b, ["m"])], nofile=limit
        ) as served,
        _connect(served.port) as client,
        ExitStack() as hogs,
    ):
        # Hold idle connections until palaver has no descriptor left (it closes the excess).
        for _ in range(limit + 16):
            hogs.enter_context(_connect(served.port))
        time.sleep(0.5)
        client.sendall(_chat())
        status, body = _response(client)
        assert status == 503, body
        error = orjson.loads(body)["error"]
        assert error["code"] == "server_overloaded"
        assert "file descriptors" in error["message"]
        assert not a.chat_requests
        assert not b.chat_requests
        hogs.close()
        time.sleep(0.3)
        answers = set()
        for _ in range(2):  # both providers answer at once: neither was cooled down
            client.sendall(_chat())
            status, body = _response(client)
            assert status == 200, body
            answers.add(orjson.loads(body)["choices"][0]["message"]["content"])
        assert answers == {"[a] hi", "[b] hi"}
    output = served.output()
    assert "provider a failed" not in output
    assert "provider b failed" not in output
    assert "out of file descriptors" in output


# -- slow and oversized clients (item 20) ---------------------------------------------------

QUICK = {
    "header_timeout": 0.5,
    "body_idle_timeout": 0.5,
    "body_timeout": 1.5,
    "max_header_bytes": 8192,
}


@pytest.fixture(scope="module")
def quick_url() -> Iterator[str]:
    """An in-process palaver with short limits, echo answering."""
    with run_palaver(server=QUICK) as url:
        yield url


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _drip(sock: socket.socket, data: bytes, every: float, until: float) -> bool:
    """Send ``data`` a byte at a time; False once the server stopped listening."""
    for byte in data:
        if time.monotonic() > until:
            return True
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return False
        time.sleep(every)
    return True


def _answer_within(sock: socket.socket, seconds: float) -> tuple[int | None, bytes]:
    """The status and body the server sends before closing (None: it closed silently)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while piece := sock.recv(65536):
            data += piece
    except ConnectionResetError:
        pass
    if not data:
        return None, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_slowloris_headers_get_408(quick_url: str) -> None:
    with _connect(_port(quick_url)) as sock:
        started = time.monotonic()
        _drip(sock, _chat(), every=0.1, until=started + 3)
        status, body = _answer_within(sock, 3)
        elapsed = time.monotonic() - started
    assert status == 408
    assert orjson.loads(body)["error"]["code"] == "request_timeout"
    assert elapsed < 1.5


def test_silent_connection_is_closed(quick_url: str) -> None:
    with _connect(_port(quick_url)) as sock:
        started = time.monotonic()
        assert _answer_within(sock, 3) == (None, b"")
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("kind", ["stopped", "trickled"])
def test_slow_body_gets_408(quick_url: str, kind: str) -> None:
    request = _chat()
    head, _, body = request.partition(b"\r\n\r\n")
    with _connect(_port(quick_url)) as sock:
        started = time.monotonic()
        sock.sendall(head + b"\r\n\r\n" + body[:5])
        if kind == "trickled":  # every gap short, the whole far too long
            _drip(sock, body[5:], every=0.2, until=started + 4)
        status, answer = _answer_within(sock, 4)
        elapsed = time.monotonic() - started
    assert status == 408
    assert orjson.loads(answer)["error"]["code"] == "request_timeout"
    assert elapsed < {"stopped": 1.5, "trickled": 2.5}[kind]


def test_oversized_headers_get_431(quick_url: str) -> None:
    with _connect(_port(quick_url)) as sock:
        request = _request("GET", "/health", headers={"x-big": "a" * 100_000})
        with contextlib.suppress(OSError):  # the server may stop reading before the end
            sock.sendall(request)
        status, body = _answer_within(sock, 3)
    assert status == 431
    assert orjson.loads(body)["error"]["code"] == "request_headers_too_large"


def test_normal_requests_are_untouched(quick_url: str) -> None:
    with _connect(_port(quick_url)) as sock:
        for _ in range(3):  # one kept-alive connection, several requests
            sock.sendall(_chat())
            status, _ = _response(sock)
            assert status == 200
        big = orjson.dumps({"model": "m", "messages": USER, "metadata": {"x": "y" * 500}})
        many_headers = {f"x-h{i}": "v" * 50 for i in range(100)}  # 6 KiB: within 8 KiB
        sock.sendall(_request("POST", "/v1/chat/completions", big, many_headers))
        assert _response(sock)[0] == 200
        time.sleep(0.8)  # idle between requests longer than the header timeout: fine
        sock.sendall(_chat())
        assert _response(sock)[0] == 200


def test_palaver_serve_bounds_slow_and_large_headers(tmp_path: Path) -> None:
    env = {"PALAVER_SERVER__HEADER_TIMEOUT": "0.5"}
    with palaver_serve(tmp_path, [], env=env) as served:
        with _connect(served.port) as sock:
            started = time.monotonic()
            _drip(sock, _chat(), every=0.1, until=started + 3)
            assert _answer_within(sock, 3)[0] == 408
            assert time.monotonic() - started < 1.5
        with _connect(served.port) as sock:
            with contextlib.suppress(OSError):
                sock.sendall(_request("GET", "/health", headers={"x-big": "a" * 8_000_000}))
            assert _answer_within(sock, 3)[0] == 431
