"""``make bench``: palaver against the bare upstream it relays to, measured in one run.

Starts the fast test upstream (``tests/upstream.py``) and ``palaver serve`` (one worker) as
processes on free loopback ports and drives them with wrk: for each palaver row (relay without
cache, cache MISS non-streaming and streaming, cache hit non-streaming and streaming,
conversation turns without and with a context window) it first measures the upstream
directly, then palaver, and prints requests/s, p50 and p99 and the ratio of the two, so
that each ratio compares figures taken under the same conditions.

Conversation turns: every request names one of ``CONVERSATIONS`` conversations (sqlite), each
holding 50 messages (``max_messages``), and sends one new message; the same with a model whose
context window palaver knows (so every turn counts, and fits the history to, its tokens) is
also given as a ratio to the turns without one.

    python bench/bench.py [--seconds 8] [--connections 32]
"""

from __future__ import annotations

import argparse
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

import orjson

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PALAVER = [PYTHON, "-m", "palaver", "serve", "--log-level", "warning"]
sys.path.insert(0, str(ROOT))

from tests.servers import free_port  # noqa: E402

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say something about the weather in Paris today, please."},
]


@dataclass
class Result:
    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _wait_healthy(url: str, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url}: not healthy after {seconds} s")


def _millis(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


CONVERSATIONS = 100
TURN = [{"role": "user", "content": "Say something about the weather in Paris today, please."}]


def _script(
    body: dict[str, object], unique: bool, bypass: bool = False, conversations: int = 0
) -> str:
    """A wrk script posting ``body``; ``unique``: every request's last message differs;
    ``bypass``: ask palaver to skip its cache; ``conversations``: each request names one of
    that many conversations (``X-Conversation-Id: bench-<n>``)."""
    lines = ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"']
    if bypass:
        lines.append('wrk.headers["Cache-Control"] = "no-cache, no-store"')
    template = orjson.dumps(body).decode()
    if not unique:
        return "\n".join([*lines, f"wrk.body = [[{template}]]", ""])
    tag = uuid.uuid4().hex[:8]
    template = template.replace("please.", "please. __N__")
    headers = "nil"
    if conversations:
        lines.append("local headers = {}")
        headers = "headers"
    return "\n".join(
        [
            *lines,
            "counter = 0",
            f"template = [[{template}]]",
            "request = function()",
            "  counter = counter + 1",
            *(
                [f'  headers["X-Conversation-Id"] = "bench-" .. (counter % {conversations})']
                if conversations
                else []
            ),
            f'  local body = string.gsub(template, "__N__", "{tag}-" .. counter)',
            f"  return wrk.format(nil, nil, {headers}, body)",
            "end",
            "",
        ]
    )


def _seed(url: str, model: str, turns: int = 25) -> None:
    """Fill every bench conversation to 50 messages (25 turns)."""
    for n in range(CONVERSATIONS):
        for turn in range(turns):
            content = f"Seed turn {turn} of conversation {n}: tell me about the weather."
            request = urllib.request.Request(  # noqa: S310 - loopback
                url,
                data=orjson.dumps(
                    {"model": model, "messages": [{"role": "user", "content": content}]}
                ),
                headers={"Content-Type": "application/json", "X-Conversation-Id": f"bench-{n}"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                response.read()


# With two cores or more, the server measured gets a core of its own and the load generator
# (with the upstream palaver relays to) the other: the figures then compare like with like
# instead of depending on how the scheduler happens to share two cores among three processes.
PINNING = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
SERVER_CORE, LOAD_CORE = 0, 1


def _on(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if PINNING else []


def _pin(process: subprocess.Popen[bytes], core: int) -> None:
    if PINNING:
        subprocess.run(
            ["taskset", "-a", "-c", "-p", str(core), str(process.pid)],
            capture_output=True,
            check=True,
        )


def _wrk(
    name: str,
    url: str,
    body: dict[str, object],
    args: argparse.Namespace,
    unique: bool,
    bypass: bool = False,
    conversations: int = 0,
) -> Result:
    def run(seconds: int) -> str:
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(_script(body, unique, bypass, conversations))
        command = [*_on(LOAD_CORE), "wrk", "-t1", f"-c{args.connections}", f"-d{seconds}s"]
        command.append("--latency")
        try:
            return subprocess.run(
                [*command, "-s", script.name, url], capture_output=True, text=True, check=True
            ).stdout
        finally:
            os.unlink(script.name)

    run(2)  # warm-up
    out = run(args.seconds)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _millis(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _millis(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        print(f"  {name}: socket errors: {socket_errors.group(1)}", file=sys.stderr)
    return Result(name, rps, p50, p99, int(errors.group(1)) if errors else 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")

    up_port, palaver_port, quiet_port = free_port(), free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="palaver-bench-"))
    config = workdir / "bench.toml"
    config.write_text(
        f"""
[[providers]]
name = "bench-upstream"
base_url = "http://127.0.0.1:{up_port}/v1"
models = ["*"]

[cache]
enabled = true

[conversations]
auto_create = false
path = "{workdir / "bench.sqlite3"}"

[models."bench-window"]
context_window = 32768
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("OPENAI_BASE_URL", None)
    env.pop("OLLAMA_BASE_URL", None)
    env["PYTHONPATH"] = str(ROOT)
    servers = [
        subprocess.Popen(
            [PYTHON, "-m", "tests.upstream", "--port", str(up_port)], cwd=ROOT, env=env
        ),
        subprocess.Popen(
            [*PALAVER, "--port", str(palaver_port), "--config", str(config)],
            cwd=workdir,
            env=env,
        ),
        subprocess.Popen(  # the same with metrics off, to measure what they cost
            [*PALAVER, "--port", str(quiet_port), "--config", str(config)],
            cwd=workdir,
            env={
                **env,
                "PALAVER_SERVER__METRICS": "false",
                "PALAVER_CONVERSATIONS__PATH": str(workdir / "quiet.sqlite3"),
            },
        ),
    ]
    try:
        _wait_healthy(f"http://127.0.0.1:{up_port}/v1/models", servers[0])
        _wait_healthy(f"http://127.0.0.1:{palaver_port}/health", servers[1])
        _wait_healthy(f"http://127.0.0.1:{quiet_port}/health", servers[2])
        quiet = f"http://127.0.0.1:{quiet_port}/v1/chat/completions"
        plain = {"model": "bench-model", "messages": MESSAGES}
        streamed = {**plain, "stream": True}
        up = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        pal = f"http://127.0.0.1:{palaver_port}/v1/chat/completions"
        _seed(pal, "bench-window")
        turns = {"model": "bench-model", "messages": TURN}
        windowed = {"model": "bench-window", "messages": TURN}
        rows = [
            ("palaver relay, no cache", plain, True, True, 0),
            ("palaver non-streaming", plain, True, False, 0),
            ("palaver streaming", streamed, True, False, 0),
            ("palaver cache hit", plain, False, False, 0),
            ("palaver cache hit, stream", streamed, False, False, 0),
            # alternated twice: the two are compared by their best, measured side by side
            ("conversation turns", turns, True, True, CONVERSATIONS),
            ("turns, context window", windowed, True, True, CONVERSATIONS),
            ("conversation turns (2)", turns, True, True, CONVERSATIONS),
            ("turns, context window (2)", windowed, True, True, CONVERSATIONS),
            # metrics on and off, alternated twice like the turns
            ("relay, metrics on", plain, True, True, 0),
            ("relay, metrics off", plain, True, True, 0),
            ("relay, metrics on (2)", plain, True, True, 0),
            ("relay, metrics off (2)", plain, True, True, 0),
        ]
        # The machine's speed drifts by tens of percent within a minute: every palaver row is
        # compared with the upstream measured just before it, under the same conditions.
        pairs: list[tuple[Result, Result]] = []
        for name, body, unique, bypass, conversations in rows:
            server, target = (servers[2], quiet) if "metrics off" in name else (servers[1], pal)
            for other in servers[1:]:
                _pin(other, LOAD_CORE)
            _pin(servers[0], SERVER_CORE)
            direct = _wrk("upstream direct", up, plain, args, unique=False)
            _pin(servers[0], LOAD_CORE)
            _pin(server, SERVER_CORE)
            measured = _wrk(name, target, body, args, unique, bypass, conversations)
            pairs.append((direct, measured))
    finally:
        for server in servers:
            server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    pinned = "the server measured on a core of its own" if PINNING else "no core pinning"
    print(
        f"\n{os.cpu_count()} cores, wrk -t1 -c{args.connections} -d{args.seconds}s, one worker,"
        f" {pinned}; a new body every request but for cache hits (MISS rows: cache on);"
        " each row's ratio is to the upstream measured directly just before it"
    )
    header = f"{'':26} {'req/s':>9} {'direct':>9} {'ratio':>7} {'p50 ms':>8} {'p99 ms':>8}"
    print(header + f" {'errors':>7}")
    for direct, r in pairs:
        ratio = r.rps / direct.rps
        print(
            f"{r.name:26} {r.rps:9.0f} {direct.rps:9.0f} {ratio:6.2f}x"
            f" {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:7d}"
        )
    best = {r.name.removesuffix(" (2)"): 0.0 for _, r in pairs}
    for _, r in pairs:
        best[r.name.removesuffix(" (2)")] = max(best[r.name.removesuffix(" (2)")], r.rps)
    without, with_window = best["conversation turns"], best["turns, context window"]
    print(
        f"context window on conversation turns: {with_window / without:.2f}x of the turns"
        " without one (the best of two alternated runs each)"
    )
    print(
        f"metrics on the relay: {best['relay, metrics on'] / best['relay, metrics off']:.2f}x"
        " of the relay with metrics off (the best of two alternated runs each)"
    )
    results = [r for pair in pairs for r in pair]
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
