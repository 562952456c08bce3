"""Request ids, Server-Timing and logs (CONTRACT §10): every response carries X-Request-Id
(a client's sane one echoed) and Server-Timing; a 5xx body names the id; with
``log_format = "json"`` every line is one JSON object, and the access log's ids match the
responses'."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import free_port, wait_healthy
from tests.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


def test_every_response_has_a_request_id_and_timing(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)]) as url:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        sent = httpx.post(url + "/v1/chat/completions", json=body, headers={"X-Request-Id": "t-1"})
        assert sent.headers["x-request-id"] == "t-1"
        timing = sent.headers["server-timing"]
        assert timing.startswith("palaver;dur=")
        assert "provider;dur=" in timing
        assert 'desc="up1"' in timing
        fresh = httpx.get(url + "/v1/models")
        assert fresh.headers["x-request-id"].startswith("req_")
        assert (
            httpx.get(url + "/v1/models").headers["x-request-id"] != fresh.headers["x-request-id"]
        )
        for insane in ("has space", "x" * 200, "semi;colon"):
            echoed = httpx.get(url + "/health", headers={"X-Request-Id": insane})
            assert echoed.headers["x-request-id"].startswith("req_")
        missing = httpx.get(url + "/nowhere")
        assert missing.status_code == 404
        assert missing.headers["x-request-id"].startswith("req_")
        with openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0) as client:
            raw = client.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert raw.headers["x-request-id"].startswith("req_")
            assert raw.request_id == raw.headers["x-request-id"]  # what the SDK reports


def test_a_5xx_body_names_the_request_id(upstream: Upstream) -> None:
    upstream.behave(status=500, error={"error": {"message": "boom", "type": "server_error"}})
    with run_palaver([provider_entry(upstream)]) as url:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        failed = httpx.post(url + "/v1/chat/completions", json=body)
        assert failed.status_code >= 500
        request_id = failed.headers["x-request-id"]
        assert f"(request id {request_id})" in failed.json()["error"]["message"]
        again = httpx.post(url + "/v1/chat/completions", json=body)
        assert f"(request id {again.headers['x-request-id']})" in again.json()["error"]["message"]
        assert request_id not in again.json()["error"]["message"]


@pytest.fixture
def json_palaver(upstream: Upstream, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    config = tmp_path / "palaver.toml"
    config.write_text(
        f"""
[server]
log_format = "json"
access_log = true

[[providers]]
name = "up1"
base_url = "{upstream.url}/v1"

[[keys]]
name = "web-app"
key = "sk-web-app"
rpm = 100

[conversations]
path = "{tmp_path / "c.sqlite3"}"
"""
    )
    port = free_port()
    log = tmp_path / "palaver.log"
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "palaver",
                "serve",
                "--port",
                str(port),
                "--config",
                str(config),
            ],
            env=clean,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, output=log.read_text)
        yield url, log
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)


def test_json_logs_one_object_a_line_with_matching_ids(json_palaver: tuple[str, Path]) -> None:
    url, log = json_palaver
    headers = {"Authorization": "Bearer sk-web-app"}
    with openai.OpenAI(base_url=url + "/v1", api_key="sk-web-app", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "hello"}],
            extra_headers={"X-Conversation-Id": "trip"},
        )
        answered = raw.headers["x-request-id"]
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "stream me"}], stream=True
        )
        assert list(stream)
    refused = httpx.post(url + "/v1/chat/completions", headers=headers, content=b"{not json")
    assert refused.status_code == 400
    time.sleep(0.3)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records: list[dict[str, Any]] = [orjson.loads(line) for line in lines]  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "palaver.access"]
    by_id = {r["request_id"]: r for r in access}
    turn = by_id[answered]
    assert turn["route"] == "POST /v1/chat/completions"
    assert (turn["status"], turn["model"], turn["provider"], turn["cache"]) == (
        200,
        "m",
        "up1",
        "MISS",
    )
    assert (turn["key"], turn["conversation"]) == ("web-app", "trip")
    assert (turn["input_tokens"], turn["output_tokens"]) == (5, 7)
    assert turn["duration_ms"] > 0
    bad = by_id[refused.headers["x-request-id"]]
    assert bad["status"] == 400
    assert sum(1 for r in access if r["route"] == "POST /v1/chat/completions") == 3
    startup = " ".join(r["message"] for r in records)
    assert "key web-app: models *; rpm 100" in startup
    assert "sk-web-app" not in log.read_text()  # names, never secrets
