"""Scale-out on Redis: two palaver processes sharing one Redis, and Redis going away."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from palaver.cache import CacheUnavailable
from palaver.cache.redis import RedisCache
from palaver.redis_link import RedisLink
from tests.conftest import provider_entry, redis_url_or_skip, run_palaver
from tests.servers import free_port
from tests.test_cli import palaver_process
from tests.upstream import Upstream

USER: Any = [{"role": "user", "content": "shared across processes"}]


async def test_redis_cache_backend(redis_prefix: str) -> None:
    link = RedisLink(redis_url_or_skip(), redis_prefix)
    cache = RedisCache(link, ttl=0.3)
    try:
        assert await cache.get("k") is None
        await cache.set("k", {"object": "chat.completion", "choices": []})
        assert await cache.get("k") == {"object": "chat.completion", "choices": []}
        token = await cache.lock("k")
        assert token
        assert await cache.lock("k") is None  # held
        await cache.unlock("k", "not-the-token")
        assert await cache.lock("k") is None  # only the holder may release it
        await cache.unlock("k", token)
        assert await cache.lock("k") is not None
        await asyncio.sleep(0.4)
        assert await cache.get("k") is None  # expired by Redis TTL
        raw = await link.client.keys(redis_prefix + "*")
        assert all(len(key) <= len(redis_prefix) + 70 for key in raw)
    finally:
        await link.close()


def _config(tmp_path: Path, upstream: Upstream, prefix: str, url: str) -> Path:
    path = tmp_path / f"palaver-{prefix.strip(':')}.toml"
    path.write_text(
        f"""
[[providers]]
name = "{upstream.name}"
base_url = "{upstream.url}/v1"
models = ["*"]

[cache]
backend = "redis"

[conversations]
backend = "redis"

[redis]
url = "{url}"
key_prefix = "{prefix}"
"""
    )
    return path


@pytest.fixture
def two_palavers(
    upstream: Upstream, redis_prefix: str, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    config = _config(tmp_path, upstream, redis_prefix, redis_url_or_skip())
    with (
        palaver_process("--config", str(config), env={}, cwd=tmp_path) as one,
        palaver_process("--config", str(config), env={}, cwd=tmp_path) as two,
    ):
        yield one, two


def test_conversation_and_cache_cross_processes(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    with (
        openai.OpenAI(base_url=one + "/v1", api_key="k", max_retries=0) as a,
        openai.OpenAI(base_url=two + "/v1", api_key="k", max_retries=0) as b,
    ):
        a.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "begun on one"}],
            extra_body={"conversation": "roaming"},
        )
        b.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "continued on two"}],
            extra_body={"conversation": "roaming"},
        )
        assert [m["content"] for m in upstream.chat_requests[-1].body["messages"]] == [
            "begun on one",
            "[up1] begun on one",
            "continued on two",
        ]
        items = list(a.conversations.items.list("roaming"))
        assert len(items) == 4

        first = a.chat.completions.with_raw_response.create(model="m", messages=USER)
        second = b.chat.completions.with_raw_response.create(model="m", messages=USER)
        stream = b.chat.completions.with_raw_response.create(model="m", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert stream.headers["x-cache"] == "HIT"
    assert text == "[up1] shared across processes"
    assert len(upstream.chat_requests) == 3


async def test_twenty_identical_requests_over_two_processes_reach_upstream_once(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    upstream.behave(first_byte_delay=0.5)

    async def one(url: str, stream: bool) -> str:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
            if not stream:
                reply = await c.chat.completions.create(model="m", messages=USER)
                return reply.choices[0].message.content or ""
            chunks = await c.chat.completions.create(model="m", messages=USER, stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in chunks if ch.choices])

    texts = await asyncio.gather(*(one(two_palavers[n % 2], n % 3 == 0) for n in range(20)))
    assert texts == ["[up1] shared across processes"] * 20
    assert len(upstream.chat_requests) == 1


@contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    process = subprocess.Popen(
        [
            server,
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--enable-debug-command", "local"),  # DEBUG SLEEP stalls it in tests
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        import redis

        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        yield process
    finally:
        process.terminate()
        process.wait(10)


def test_redis_outage_and_recovery(upstream: Upstream) -> None:
    redis_url_or_skip()  # the same requirement as the other Redis tests
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    settings: dict[str, Any] = {
        "cache": {"enabled": True, "backend": "redis"},
        "conversations": {"backend": "redis"},
        "redis": {"url": url, "key_prefix": "outage:"},
    }
    chat_body = {"model": "m", "messages": [{"role": "user", "content": "are you there?"}]}
    with run_palaver([provider_entry(upstream)], **settings) as palaver:
        chat = palaver + "/v1/chat/completions"
        with private_redis(port) as redis_server:
            named = httpx.post(chat, json={**chat_body, "conversation": "c1"})
            assert named.status_code == 200
            assert named.headers["x-cache"] == "MISS"
            assert httpx.post(chat, json=chat_body).headers["x-cache"] == "HIT"
            redis_server.terminate()
            redis_server.wait(10)

            started = time.monotonic()
            anonymous = httpx.post(chat, json=chat_body)
            assert anonymous.status_code == 200
            assert anonymous.headers["x-cache"] == "BYPASS"
            assert "x-conversation-id" not in anonymous.headers  # none auto-created
            assert "conversation" not in anonymous.json()
            streamed = httpx.post(chat, json={**chat_body, "stream": True})
            assert streamed.status_code == 200
            assert streamed.headers["x-cache"] == "BYPASS"
            assert streamed.text.endswith("data: [DONE]\n\n")

            for response in (
                httpx.post(chat, json={**chat_body, "conversation": "c1"}),
                httpx.post(
                    chat, json={**chat_body, "stream": True}, headers={"x-conversation-id": "c1"}
                ),
                httpx.get(palaver + "/v1/conversations/c1"),
                httpx.get(palaver + "/v1/conversations/c1/items"),
                httpx.post(palaver + "/v1/conversations", json={}),
                httpx.get(palaver + "/v1/conversations"),
            ):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert "Redis" in error["message"]
                assert error["code"] == "service_unavailable"
            assert time.monotonic() - started < 5  # tight timeouts: no request hangs

        with private_redis(port):
            time.sleep(1.2)  # the breaker lets the next call try again
            back = httpx.post(chat, json={**chat_body, "conversation": "c1"})
            assert back.status_code == 200
            assert back.headers["x-cache"] == "MISS"  # the old Redis kept nothing
            assert httpx.post(chat, json=chat_body).headers["x-cache"] == "HIT"
            assert httpx.get(palaver + "/v1/conversations/c1").status_code == 200


async def test_unreachable_cache_raises_cache_unavailable() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", "none:")
    cache = RedisCache(link, ttl=10)
    try:
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
        assert not cache.available
        assert await cache.lock("k")  # no coordination possible: lead
    finally:
        await link.close()
