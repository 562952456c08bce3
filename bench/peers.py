"""``make bench-peers``: LiteLLM's proxy, started and measured the way palaver is.

LiteLLM (pinned by ``bench/requirements-peers.lock``, installed in ``.venv-peers`` by the
Makefile) runs one worker in front of the same test upstream, its access and info logs off
as palaver's are, with a model entry for each model name the bench sends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from bench import drive
from bench.drive import Server
from tests.servers import free_port

if TYPE_CHECKING:
    from bench.bench import Figures

MODELS = ("bench-model", "wait-20ms", "stream-50x20ms")

# uvicorn's and LiteLLM's loggers at WARNING (palaver runs with --log-level warning)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "loggers": {
        name: {"level": "WARNING"}
        for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "LiteLLM", "LiteLLM Proxy")
    },
}


def _config(workdir: Path, upstream: str) -> Path:
    """The proxy's config: each bench model relayed to the upstream as an OpenAI model."""
    entries = [
        "\n".join(
            [
                f"  - model_name: {model}",
                "    litellm_params:",
                f"      model: openai/{model}",
                f"      api_base: {upstream}",
                "      api_key: none",
            ]
        )
        for model in MODELS
    ]
    path = workdir / "litellm.yaml"
    path.write_text("model_list:\n" + "\n".join(entries) + "\n")
    return path


def start(litellm: str, workdir: Path, upstream: str, env: dict[str, str]) -> Server:
    logging = workdir / "litellm-logging.json"
    logging.write_text(json.dumps(LOGGING))
    port = free_port()
    command = [litellm, "--config", str(_config(workdir, upstream)), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", "1", "--log_config", str(logging)]
    peer_env = {
        **env,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",  # loopback, no keys
        "LITELLM_LOG": "ERROR",
    }
    return drive.start("litellm", command, port, "/health/liveliness", peer_env, workdir, wait=180)


def compare(ours: Figures, theirs: Figures) -> list[str]:
    """palaver's figures beside LiteLLM's, measured in the same run."""
    rows = [
        ("added latency c=1, p50", f"{ours.p50:.2f} ms", f"{theirs.p50:.2f} ms"),
        ("added latency c=1, p99", f"{ours.p99:.2f} ms", f"{theirs.p99:.2f} ms"),
        ("max requests/s", f"{ours.max_ratio:.3f}x", f"{theirs.max_ratio:.3f}x"),
        ("sustained requests/s @20 ms", ours.sustained, theirs.sustained),
        ("stall-free streams, 1 worker", str(ours.streams), str(theirs.streams)),
    ]
    lines = ["", f"{'one worker each':30} {'palaver':>22} {'LiteLLM proxy':>22}"]
    lines += [f"{figure:30} {a:>22} {b:>22}" for figure, a, b in rows]
    return lines
