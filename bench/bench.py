"""``make bench``: palaver against the bare upstream it relays to, measured in one run.

Starts the test upstream (``tests/upstream.py``, which answers from memory, or paced by the
model's name) and ``palaver serve`` (one worker each, a conversation backend each: sqlite,
memory, redis) as processes on free loopback ports, and measures what public gateway
benchmarks measure, each palaver figure against the bare upstream measured just before it:

- added latency at concurrency 1 (p50, p99; the medians of three alternated runs), wrk;
- max requests/s with the instant upstream (relay without cache, cache MISS and hit rows);
- sustained requests/s with a 20 ms upstream: the best rate with p99 < 1 s and < 0.1 %
  errors over 64, 256 and 1024 connections;
- stall-free streams: N concurrent streams of 50 chunks paced 20 ms (``streams.mjs``); a stall
  is a gap over 100 ms; the largest N of 1/32/128/512/1024 with no stall and every stream
  complete; 1024 also with ``--workers 2``;
- conversation turns/s on each backend, as a ratio to the stateless relay measured just
  before (the median of three alternated rounds): each request names one of 1,000
  conversations seeded with 20 messages and sends one new message; the server keeps 20
  messages a conversation (``max_messages``), so the histories stay at 20 however long the
  run, as conversations at their cap do;
- 100 concurrent turns on one conversation (on servers with room for all 200 messages): p99,
  and the stored conversation checked whole;
- resident memory of the worker, idle and at its peak.

    python -m bench.bench [--seconds 8] [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench import drive, peers
from bench.drive import BYPASS, LOAD_CORE, PINNING, PYTHON, ROOT, SERVER_CORE, Server
from tests.servers import free_port

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say something about the weather in Paris today, please. __N__"},
]
TURN = [{"role": "user", "content": "And what about tomorrow? __N__"}]
PLAIN: dict[str, Any] = {"model": "bench-model", "messages": MESSAGES}
INSTANT: dict[str, Any] = {  # what the upstream is sent directly (its answer's cost alike)
    "model": "bench-model",
    "messages": [MESSAGES[0], {"role": "user", "content": "hi"}],
}
CONVERSATIONS, HISTORY = 1000, 20
# The turns rows' servers keep HISTORY messages a conversation: every turn's append trims the
# two oldest, so each request finds a 20-message history however long the run (without a cap,
# 1,000 conversations grew by 2 messages a turn, to ~80 by the end of a run). The servers of
# the 100 concurrent turns on one conversation keep MAX_MESSAGES: room for all 200 messages.
MAX_MESSAGES = 256
STREAM_COUNTS = (1, 32, 128, 512, 1024)
SUSTAINED_CONNECTIONS = (64, 256, 1024)

Row = tuple[str, str, str, bool]  # figure, measured, target, met
Body = dict[str, Any]


def _config(
    workdir: Path, upstream: str, backend: str, redis_url: str | None, max_messages: int
) -> Path:
    path = workdir / f"{backend}-{max_messages}.toml"
    redis = f'\n[redis]\nurl = "{redis_url}"\n' if redis_url else ""
    path.write_text(
        f"""
[[providers]]
name = "bench-upstream"
base_url = "{upstream}"
models = ["*"]

[cache]
enabled = true

[conversations]
backend = "{backend}"
path = "{workdir / f"bench-{max_messages}.sqlite3"}"
max_active = {CONVERSATIONS * 4}
max_messages = {max_messages}
{redis}"""
    )
    return path


def _redis(workdir: Path) -> tuple[str | None, subprocess.Popen[bytes] | None]:
    """A private redis-server on a free port (the bench flushes nothing shared)."""
    if shutil.which("redis-server") is None:
        url = os.environ.get("REDIS_URL")
        return url, None
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen([*drive.on(LOAD_CORE), *command], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return f"redis://127.0.0.1:{port}/0", process
        except OSError:
            time.sleep(0.05)
    process.kill()
    return None, None


@dataclass
class Figures:
    p50: float  # added latency at c=1, ms
    p99: float
    max_ratio: float  # max requests/s, of the upstream's
    best: float  # sustained requests/s @20 ms
    best_up: float
    streams: int  # the largest stall-free N

    @property
    def sustained_ratio(self) -> float:
        return self.best / self.best_up if self.best_up else 0.0

    @property
    def sustained(self) -> str:
        return f"{self.sustained_ratio:.2f}x ({self.best:.0f}/{self.best_up:.0f})"


class Bench:
    def __init__(self, args: argparse.Namespace, upstream: Server) -> None:
        self.args = args
        self.upstream = upstream
        self.lines: list[str] = []  # the detail rows, printed under the figures
        self.compared: list[str] = []  # palaver beside its peers (--peers)

    def on_server(self, server: Server) -> None:
        """The server measured gets a core of its own, the load and the upstream the other."""
        self.upstream.pin(LOAD_CORE)
        server.pin(SERVER_CORE)

    def pair(
        self,
        name: str,
        server: Server,
        body: Body,
        direct_body: Body,
        connections: int,
        cache_control: str | None = BYPASS,
        conversations: list[str] | None = None,
    ) -> tuple[drive.Result, drive.Result]:
        """The upstream measured directly, then ``server`` in front of it."""
        seconds = self.args.seconds
        self.upstream.pin(SERVER_CORE)
        up = f"{self.upstream.url}/chat/completions"
        direct = drive.wrk(up, drive.script(direct_body, None, []), connections, seconds)
        self.on_server(server)
        lua = drive.script(body, cache_control, conversations or [])
        measured = drive.wrk(f"{server.url}/chat/completions", lua, connections, seconds)
        self.lines.append(
            f"{name:34} {measured.rps:9.0f} {direct.rps:9.0f} {measured.rps / direct.rps:6.2f}x"
            f" {measured.p50_ms:8.2f} {measured.p99_ms:8.2f} {direct.p50_ms:8.2f}"
            f" {direct.p99_ms:8.2f} {measured.errors:6d}"
        )
        return direct, measured

    def alone(
        self,
        name: str,
        server: Server,
        body: Body,
        connections: int,
        conversations: list[str] | None = None,
    ) -> drive.Result:
        """``server`` measured without the upstream measured before it."""
        self.on_server(server)
        lua = drive.script(body, BYPASS, conversations or [])
        measured = drive.wrk(f"{server.url}/chat/completions", lua, connections, self.args.seconds)
        self.lines.append(
            f"{name:34} {measured.rps:9.0f} {'':>9} {'':>7} {measured.p50_ms:8.2f}"
            f" {measured.p99_ms:8.2f} {'':>8} {'':>8} {measured.errors:6d}"
        )
        return measured

    def relay_figures(self, server: Server, label: str) -> Figures:
        """Added latency at c=1, max and sustained requests/s and stall-free streams of
        ``server`` (palaver, or a peer: ``label`` prefixes its detail rows)."""
        # added latency at concurrency 1: one p99 is one slow request in a hundred, and either
        # side may have one; the medians of three alternated runs each are compared
        runs = [
            self.pair(f"{label}relay, concurrency 1 ({i})", server, PLAIN, INSTANT, 1)
            for i in (1, 2, 3)
        ]
        p50 = median(m.p50_ms for _, m in runs) - median(d.p50_ms for d, _ in runs)
        p99 = median(m.p99_ms for _, m in runs) - median(d.p99_ms for d, _ in runs)
        # max requests/s, instant upstream
        connections = self.args.connections
        direct, relay = self.pair(f"{label}relay, no cache", server, PLAIN, INSTANT, connections)
        # sustained requests/s, 20 ms upstream
        paced: Body = {**PLAIN, "model": "wait-20ms"}
        best_up = best = 0.0
        for count in SUSTAINED_CONNECTIONS:
            row = f"{label}relay, 20 ms upstream, c={count}"
            up, measured = self.pair(row, server, paced, {**INSTANT, "model": "wait-20ms"}, count)
            if _sustained(up):
                best_up = max(best_up, up.rps)
            if _sustained(measured):
                best = max(best, measured.rps)
        streams = self.streams(server, STREAM_COUNTS)
        return Figures(p50, p99, relay.rps / direct.rps, best, best_up, streams)

    def streams(self, server: Server, counts: tuple[int, ...], pin: bool = True) -> int:
        """The largest N of ``counts`` with every stream smooth, through ``server`` (the bare
        upstream measured at each N just before)."""
        best = 0
        for count in counts:
            self.upstream.pin(SERVER_CORE if pin else None)
            direct = drive.streams(f"{self.upstream.url}/chat/completions", "stream-50x20ms", count)
            if pin:
                self.on_server(server)
            else:
                self.upstream.pin(None)
                server.pin(None)
            measured = drive.streams(f"{server.url}/chat/completions", "stream-50x20ms", count)
            self.lines.append(
                f"streams {server.name:>9} {count:5d}: palaver {_stream(measured)};"
                f" upstream {_stream(direct)}"
            )
            if not measured.smooth:
                break
            best = count
        return best


def _stream(s: drive.Streams) -> str:
    return (
        f"{s.complete}/{s.streams} complete, {s.stalled} stalled, max gap {s.max_gap_ms:.0f} ms,"
        f" first chunk p99 {s.first_p99_ms:.0f} ms"
    )


def _check(figure: str, measured: str, target: str, met: bool) -> Row:
    return figure, measured, target, met


def run(args: argparse.Namespace, workdir: Path) -> list[Row]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    for name in ("OPENAI_BASE_URL", "OLLAMA_BASE_URL", "PALAVER_CONFIG"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT)
    stoppers: list[Callable[[], None]] = []
    rows: list[Row] = []
    try:
        port = free_port()
        upstream = drive.start(
            "upstream",
            [PYTHON, "-m", "tests.upstream", "--port", str(port)],
            port,
            "/v1/models",
            env,
            ROOT,
        )
        stoppers.append(upstream.stop)
        redis_url, redis = _redis(workdir)
        if redis is not None:
            stoppers.append(redis.kill)

        def palaver(backend: str, *extra: str, max_messages: int = HISTORY) -> Server:
            config = _config(workdir, upstream.url, backend, redis_url, max_messages)
            port = free_port()
            command = [PYTHON, "-m", "palaver", "serve", "--log-level", "warning"]
            command += ["--port", str(port), "--config", str(config), *extra]
            server = drive.start(
                backend if not extra else f"{backend}x2",
                command,
                port,
                "/health",
                env,
                workdir,
            )
            stoppers.append(server.stop)
            return server

        bench = Bench(args, upstream)
        main = palaver("sqlite")
        idle = main.rss_mb()[0]
        figures = bench.relay_figures(main, "")
        rows.append(_check("added latency c=1, p50", f"{figures.p50:.2f} ms", "", True))
        rows.append(
            _check("added latency c=1, p99", f"{figures.p99:.2f} ms", "<= 1 ms", figures.p99 <= 1)
        )
        ratio = figures.max_ratio
        rows.append(_check("max requests/s", f"{ratio:.2f}x", ">= 0.35x", ratio >= 0.35))
        ratio = figures.sustained_ratio
        rows.append(
            _check("sustained requests/s @20 ms", figures.sustained, ">= 0.6x", ratio >= 0.6)
        )
        smooth = figures.streams
        rows.append(_check("stall-free streams, 1 worker", str(smooth), ">= 512", smooth >= 512))
        c = args.connections
        if not args.quick:
            streamed: Body = {**PLAIN, "stream": True}
            hit: Body = {**PLAIN, "messages": [MESSAGES[0], {"role": "user", "content": "hit me"}]}
            bench.pair("cache MISS", main, PLAIN, INSTANT, c, None)
            bench.pair("cache MISS, streaming", main, streamed, INSTANT, c, None)
            bench.pair("cache hit", main, hit, INSTANT, c, None)
            bench.pair("cache hit, streaming", main, {**hit, "stream": True}, INSTANT, c, None)

        # conversation turns
        backends = [("sqlite", main), ("memory", palaver("memory"))]
        if redis_url:
            backends.append(("redis", palaver("redis")))
        targets = {"sqlite": 0.5, "redis": 0.4, "memory": 0.0}
        for backend, server in backends:
            ids = drive.seed(server.url, CONVERSATIONS, HISTORY)
            turns: Body = {"model": "bench-model", "messages": TURN}
            _, relay = bench.pair(f"{backend}: stateless relay", server, PLAIN, INSTANT, c)
            _, turned = bench.pair(
                f"{backend}: conversation turns", server, turns, INSTANT, c, BYPASS, ids
            )
            # the machine's speed drifts within a minute: the median of three alternated
            # rounds, each the turns against the relay measured just before them
            rounds = [(turned, relay)]
            for i in (2, 3):
                again = bench.alone(f"{backend}: stateless relay ({i})", server, PLAIN, c)
                rounds.append(
                    (bench.alone(f"{backend}: turns ({i})", server, turns, c, ids), again)
                )
            turned, relay = sorted(rounds, key=lambda r: r[0].rps / r[1].rps)[1]
            ratio = turned.rps / relay.rps
            target = targets[backend]
            rows.append(
                _check(
                    f"turns/s, {backend}, of the stateless relay",
                    f"{ratio:.2f}x ({turned.rps:.0f}/{relay.rps:.0f})",
                    f">= {target}x" if target else "",
                    ratio >= target and not any(t.errors for t, _ in rounds),
                )
            )
        peak = max(server.rss_mb()[1] for _, server in backends)
        for _, server in backends:
            server.stop()
        roomy = [(backend, palaver(backend, max_messages=MAX_MESSAGES)) for backend, _ in backends]
        for backend, server in roomy:
            bench.on_server(server)
            concurrent = drive.concurrent_turns(server.url, "bench-model", 100)
            rows.append(
                _check(
                    f"100 concurrent turns, one conversation, {backend}, p99",
                    f"{concurrent.p99_ms:.0f} ms (p50 {concurrent.p50_ms:.0f})"
                    + ("" if concurrent.kept else ", NOT KEPT WHOLE"),
                    "< 300 ms",
                    concurrent.p99_ms < 300 and concurrent.kept and not concurrent.errors,
                )
            )
        peak = max(peak, *(server.rss_mb()[1] for _, server in roomy))
        rows.append(
            _check(
                "RSS idle / peak",
                f"{idle:.0f} / {peak:.0f} MB",
                "< 60 / < 150 MB",
                idle < 60 and peak < 150,
            )
        )
        for _, server in roomy:
            server.stop()
        if not args.quick:
            two = palaver("sqlite", "--workers", "2")
            smooth = bench.streams(two, (512, 1024), pin=False)
            rows.append(
                _check("stall-free streams, --workers 2", str(smooth), ">= 1024", smooth >= 1024)
            )
            two.stop()
        if args.peers:
            peer = peers.start(args.peers, workdir, upstream.url, env)
            stoppers.append(peer.stop)
            bench.compared = peers.compare(figures, bench.relay_figures(peer, "litellm: "))
    finally:
        for stop in reversed(stoppers):
            stop()
    pinned = "the server measured on a core of its own" if PINNING else "no pinning"
    print(
        f"\n{os.cpu_count()} cores; {pinned}; wrk -t1 -d{args.seconds}s;"
        " every row against the bare upstream measured just before it\n"
    )
    print(
        f"{'':34} {'req/s':>9} {'direct':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'up p50':>8} {'up p99':>8} {'errors':>6}"
    )
    for line in bench.lines:
        print(line)
    for line in bench.compared:
        print(line)
    return rows


def _sustained(result: drive.Result) -> bool:
    return result.p99_ms < 1000 and result.errors <= result.requests * 0.001


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32, help="for max requests/s")
    parser.add_argument("--quick", action="store_true", help="the target figures only")
    parser.add_argument("--peers", metavar="LITELLM", help="also measure LiteLLM's proxy")
    args = parser.parse_args()
    if args.peers:
        args.peers = os.path.abspath(args.peers)
        if not os.access(args.peers, os.X_OK):
            raise SystemExit(f"{args.peers}: not an executable (make bench-peers installs it)")
    for tool in ("wrk", "node"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    workdir = Path(tempfile.mkdtemp(prefix="palaver-bench-"))
    try:
        rows = run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'figure':{width}}  {'measured':28}  {'target':16}  met")
    for figure, measured, target, met in rows:
        print(f"{figure:{width}}  {measured:28}  {target:16}  {'yes' if met else 'NO'}")
    return 0 if all(r[3] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
