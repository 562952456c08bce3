"""``GET /metrics`` (CONTRACT §10): after a known mix of requests the counters and histogram
counts equal what was sent; with ``--workers 2`` a scrape covers both processes; no label is
a secret; the admin key guards it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import free_port, wait_healthy
from tests.upstream import Upstream

ADMIN = "admin-secret-123"
WEB = "sk-web-secret"
BATCH = "sk-batch-secret"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(url: str, admin: str | None = ADMIN) -> Samples:
    headers = {"Authorization": f"Bearer {admin}"} if admin else {}
    scraped = httpx.get(url + "/metrics", headers=headers)
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    out: Samples = defaultdict(float)
    for family in text_string_to_metric_families(scraped.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] += sample.value
    return out


def total(found: Samples, name: str, **labels: str) -> float:
    return sum(
        float(value)
        for (sample, have), value in found.items()
        if sample == name and all((k, v) in have for k, v in labels.items())
    )


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


def test_the_scraped_numbers_equal_what_was_sent(upstream: Upstream) -> None:
    with run_palaver(
        [provider_entry(upstream)],
        server={"admin_key": ADMIN},
        cache={"enabled": True},
        keys=[
            {"name": "web-app", "key": WEB},
            {"name": "batch", "key": BATCH, "rpm": 1},
        ],
    ) as url:
        before = samples(url)
        web = openai.OpenAI(base_url=url + "/v1", api_key=WEB, max_retries=0)
        batch = openai.OpenAI(base_url=url + "/v1", api_key=BATCH, max_retries=0)
        messages: Any = [{"role": "user", "content": "metrics please"}]
        for n in range(3):  # 3 MISS
            web.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q{n}"}])
        for _ in range(2):  # 1 MISS, then 2 HIT
            web.chat.completions.create(model="m", messages=messages)
        web.chat.completions.create(model="m", messages=messages)
        stream = web.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "stream"}], stream=True
        )
        assert list(stream)
        batch.chat.completions.create(model="m", messages=[{"role": "user", "content": "b"}])
        with pytest.raises(openai.RateLimitError):
            batch.chat.completions.create(model="m", messages=[{"role": "user", "content": "c"}])
        upstream.behave(status=503, times=1)
        with pytest.raises(openai.APIStatusError):
            web.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
        after = samples(url)
        web.close()
        batch.close()

    delta = {sample: value - before.get(sample, 0.0) for sample, value in after.items()}
    chat = "/v1/chat/completions"
    requests = "palaver_requests_total"
    assert total(delta, requests, route=chat, status="200", cache="MISS") == 6  # 3+1+stream+b
    assert total(delta, requests, route=chat, status="200", cache="HIT") == 2
    assert total(delta, requests, route=chat, status="429") == 1
    failed = [
        have
        for (name, have), n in delta.items()
        if name == requests and n and dict(have)["status"].startswith("5")
    ]
    assert len(failed) == 1, failed  # the provider's failure, relayed as a 5xx
    assert total(delta, requests, route=chat, provider="up1", status="200") == 6  # not hits
    assert total(delta, "palaver_request_duration_seconds_count", route=chat) == 10
    assert total(delta, "palaver_overhead_seconds_count", route=chat) == 10
    assert total(delta, "palaver_time_to_first_token_seconds_count", model="m") == 1
    # the test upstream reports 5 + 7 tokens an answer; hits count the answer they served
    assert total(delta, "palaver_tokens_total", key="web-app", kind="input") == 5 * 7
    assert total(delta, "palaver_tokens_total", key="web-app", kind="output") == 7 * 7
    assert total(delta, "palaver_tokens_total", key="batch", kind="output") == 7
    assert total(delta, "palaver_rate_limited_total", key="batch", limit="rpm") == 1
    assert total(delta, "palaver_upstream_errors_total", provider="up1", kind="status_5xx") == 1
    assert total(after, "palaver_active_streams") == 0
    labels = {value for (_, have) in after for _, value in have}
    assert not labels & {WEB, BATCH, ADMIN}


def test_the_admin_key_guards_metrics(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)], server={"admin_key": ADMIN}) as url:
        assert httpx.get(url + "/metrics").status_code == 401
        wrong = httpx.get(url + "/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"
        assert samples(url)
    with run_palaver([provider_entry(upstream)], server={"api_keys": ["sk-1"]}) as url:
        closed = httpx.get(url + "/metrics", headers={"Authorization": "Bearer sk-1"})
        assert closed.status_code == 401  # API keys alone do not open it
        assert "admin_key" in closed.json()["error"]["message"]
    with run_palaver([provider_entry(upstream)]) as url:
        assert samples(url, admin=None)  # a palaver without any key: open, as its API is
    with run_palaver([provider_entry(upstream)], server={"metrics": False}) as url:
        assert httpx.get(url + "/metrics").status_code == 404


def test_two_workers_one_scrape(tmp_path: Path) -> None:
    port = free_port()
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_999999.db").write_bytes(b"stale")  # a previous run's: removed
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    env = {**clean, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    command = [sys.executable, "-m", "palaver", "serve", "--workers", "2", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, seconds=30)
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(40):  # a new connection each: both workers take some
            with httpx.Client() as client:
                assert client.post(url + "/v1/chat/completions", json=body).status_code == 200
        pids = {name.split("_")[-1] for name in os.listdir(directory) if name.startswith("counter")}
        assert "999999.db" not in pids
        assert len(pids) == 2, pids  # both processes counted requests
        for _ in range(4):  # whichever worker answers the scrape, it has both
            found = samples(url, admin=None)
            route = "/v1/chat/completions"
            assert total(found, "palaver_requests_total", route=route, status="200") == 40
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(20)
