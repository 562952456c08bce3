"""The loads ``make bench`` drives: wrk for requests/s and latency, ``streams.mjs`` for
concurrent streams, an aiohttp client for concurrent turns on one conversation; and the
servers it measures, started as processes on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BYPASS = "no-cache, no-store"  # Cache-Control: neither look up nor store

# With two cores or more, the server measured gets a core of its own and the load generator
# (with the upstream palaver relays to) the other: the figures then compare like with like
# instead of depending on how the scheduler happens to share two cores among the processes.
PINNING = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CORE, LOAD_CORE = 0, 1


def on(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if PINNING and core is not None else []


@dataclass
class Server:
    name: str
    url: str  # the base URL, ".../v1"
    process: subprocess.Popen[bytes]

    def pin(self, core: int | None) -> None:
        """Run on ``core`` (None: on any), with every thread and worker process."""
        if not PINNING:
            return
        cpus = str(core) if core is not None else f"0-{(os.cpu_count() or 1) - 1}"
        pids = [self.process.pid, *_children(self.process.pid)]
        for pid in pids:
            subprocess.run(["taskset", "-a", "-c", "-p", cpus, str(pid)], capture_output=True)

    def rss_mb(self) -> tuple[float, float]:
        """Resident memory now and at its peak, in MB, of the largest process (a worker)."""
        best = (0.0, 0.0)
        for pid in [self.process.pid, *_children(self.process.pid)]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            now = int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
            peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]
            best = max(best, (now, peak), key=lambda pair: pair[1])
        return best

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def start(
    name: str,
    command: list[str],
    port: int,
    health: str,
    env: dict[str, str],
    cwd: Path,
    wait: float = 30,
) -> Server:
    """``command``, serving the OpenAI API under ``/v1`` on loopback ``port``, once the path
    ``health`` answers 200."""
    origin = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, cwd=cwd, env=env)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name}: exited with {process.returncode}")
        try:
            with urllib.request.urlopen(origin + health, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return Server(name, origin + "/v1", process)
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{name}: not healthy after {wait:.0f} s")


# -- wrk ---------------------------------------------------------------------------------------


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # non-2xx responses and socket errors (timeouts included)


def _millis(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def script(body: dict[str, Any], cache_control: str | None, conversations: list[str]) -> str:
    """A wrk script posting ``body`` with a new last message every request (so nothing is
    a cache hit unless ``body`` is sent unchanged: ``conversations`` empty and the tag
    removed), naming each request one of ``conversations`` if given."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    if cache_control:
        lines.append(f'wrk.headers["Cache-Control"] = "{cache_control}"')
    template = orjson.dumps(body).decode()
    if "__N__" not in template:
        return "\n".join([*lines, f"wrk.body = [[{template}]]", ""])
    tag = uuid.uuid4().hex[:8]
    pick = []
    if conversations:
        ids = ", ".join(f'"{c}"' for c in conversations)
        # wrk.format's headers replace wrk.headers: start from a copy of them
        lines += [
            f"ids = {{{ids}}}",
            "local headers = {}",
            "for name, value in pairs(wrk.headers) do headers[name] = value end",
        ]
        pick = ['  headers["X-Conversation-Id"] = ids[(counter % #ids) + 1]']
    return "\n".join(
        [
            *lines,
            "counter = 0",
            f"template = [[{template}]]",
            "request = function()",
            "  counter = counter + 1",
            *pick,
            f'  local body = string.gsub(template, "__N__", "{tag}-" .. counter)',
            f"  return wrk.format(nil, nil, {'headers' if conversations else 'nil'}, body)",
            "end",
            "",
        ]
    )


def wrk(
    url: str,
    lua: str,
    connections: int,
    seconds: int,
    warmup: int = 2,
    timeout_s: int = 2,
) -> Result:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(lua)

    def run(duration: int) -> str:
        command = [*on(LOAD_CORE), "wrk", "-t1", f"-c{connections}", f"-d{duration}s"]
        command += ["--latency", f"--timeout={timeout_s}s", "-s", file.name, url]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    try:
        if warmup:
            run(warmup)
        out = run(seconds)
    finally:
        os.unlink(file.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    p50 = _millis(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _millis(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(errors.group(1)) if errors else 0
    failed += sum(int(n) for n in socket.groups()) if socket else 0
    return Result(rps, p50, p99, requests, failed)


# -- streams -----------------------------------------------------------------------------------


@dataclass
class Streams:
    streams: int
    complete: int
    stalled: int
    max_gap_ms: float
    first_p99_ms: float

    @property
    def smooth(self) -> bool:
        return self.complete == self.streams and self.stalled == 0


def streams(url: str, model: str, count: int) -> Streams:
    command = [*on(LOAD_CORE), "node", str(ROOT / "bench" / "streams.mjs"), url, model, str(count)]
    out = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300).stdout
    found = orjson.loads(out.strip().splitlines()[-1])
    return Streams(
        count,
        found["complete"],
        found["stalled"],
        found["max_gap_ms"],
        found["first_p99_ms"] or 0.0,
    )


# -- conversations -----------------------------------------------------------------------------


def seed(base: str, conversations: int, messages: int) -> list[str]:
    """``conversations`` conversations of ``messages`` messages each (user and assistant in
    turn), made with the Conversations API; their ids."""

    async def run() -> list[str]:
        items = [
            {
                "type": "message",
                "role": "user" if i % 2 == 0 else "assistant",
                "content": f"Seed message {i}: a sentence about the weather in Paris today.",
            }
            for i in range(messages)
        ]
        body = orjson.dumps({"items": items})
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=16),
            headers={"Content-Type": "application/json"},
        ) as session:

            async def one() -> str:
                async with session.post(f"{base}/conversations", data=body) as response:
                    response.raise_for_status()
                    return str((await response.json())["id"])

            return list(await asyncio.gather(*(one() for _ in range(conversations))))

    return asyncio.run(run())


@dataclass
class Concurrent:
    p50_ms: float
    p99_ms: float
    errors: int
    kept: bool  # every stored user message is followed by its own reply


def concurrent_turns(base: str, model: str, count: int) -> Concurrent:
    """``count`` turns on one conversation at once; their latency, and whether the stored
    conversation is whole (each user message with its own reply, none twice)."""

    async def run() -> Concurrent:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"Content-Type": "application/json", "Cache-Control": BYPASS},
        ) as session:
            async with session.post(f"{base}/conversations", data=b"{}") as response:
                conversation = (await response.json())["id"]

            async def one(i: int) -> tuple[float, int]:
                body = {"model": model, "messages": [{"role": "user", "content": f"turn {i}"}]}
                started = time.perf_counter()
                async with session.post(
                    f"{base}/chat/completions",
                    data=orjson.dumps(body),
                    headers={"X-Conversation-Id": conversation},
                ) as response:
                    await response.read()
                    return (time.perf_counter() - started) * 1000, response.status

            done = await asyncio.gather(*(one(i) for i in range(count)))
            items: list[dict[str, Any]] = []
            query = "limit=100&order=asc"
            while True:
                async with session.get(
                    f"{base}/conversations/{conversation}/items?{query}"
                ) as response:
                    page = await response.json()
                items += page["data"]
                if not page["has_more"]:
                    break
                query = f"limit=100&order=asc&after={items[-1]['id']}"
        texts = [(item["role"], item["content"][0]["text"]) for item in items]
        users = [text for role, text in texts[0::2] if role == "user"]
        kept = (
            len(texts) == 2 * count
            and sorted(users) == sorted(f"turn {i}" for i in range(count))
            and all(
                role == "assistant" and text.endswith(texts[i - 1][1])
                for i, (role, text) in enumerate(texts)
                if i % 2
            )
        )
        latencies = sorted(ms for ms, _ in done)
        return Concurrent(
            latencies[len(latencies) // 2],
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
            sum(1 for _, status in done if status != 200),
            kept,
        )

    return asyncio.run(run())
