"""The Redis backends under load and faults, through HTTP: bursts do not take palaver offline,
concurrent turns on one conversation are each stored once, and a Redis that stalls mid-load
leaves no turn stored twice and none stored for a client that got an error."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2 as httpx
import pytest
import redis as sync_redis

from tests.conftest import provider_entry, redis_url_or_skip, run_palaver
from tests.servers import free_port
from tests.test_redis import private_redis
from tests.upstream import Upstream

CHAT = "/v1/chat/completions"


def redis_sections(url: str, prefix: str, **conversations: Any) -> dict[str, Any]:
    return {
        "cache": {"enabled": True, "backend": "redis"},
        "conversations": {"backend": "redis", **conversations},
        "redis": {"url": url, "key_prefix": prefix},
    }


@contextmanager
def redis_palaver(upstream: Upstream, url: str, prefix: str, **conversations: Any) -> Iterator[str]:
    with run_palaver(
        [provider_entry(upstream)], **redis_sections(url, prefix, **conversations)
    ) as p:
        yield p


def body(text: str, conversation: str | None = None, stream: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if conversation is not None:
        payload["conversation"] = conversation
    if stream:
        payload["stream"] = True
    return payload


def stored_texts(url: str, conversation: str) -> list[str]:
    items = httpx.get(f"{url}/v1/conversations/{conversation}/items?limit=100").json()["data"]
    texts = [item["content"][0]["text"] for item in items if item["role"] == "user"]
    after = items[-1]["id"] if items else None
    while after is not None:
        page = httpx.get(
            f"{url}/v1/conversations/{conversation}/items?limit=100&after={after}"
        ).json()
        texts += [item["content"][0]["text"] for item in page["data"] if item["role"] == "user"]
        after = page["data"][-1]["id"] if page["has_more"] else None
    return texts


def test_a_burst_of_500_requests_is_answered(upstream: Upstream, redis_prefix: str) -> None:
    """redis-py's default pool would run dry at ~100 and the breaker read that as an outage."""
    upstream.record = False
    with redis_palaver(upstream, redis_url_or_skip(), redis_prefix) as url:

        async def burst() -> list[int]:
            limits = httpx.Limits(max_connections=500, max_keepalive_connections=0)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

                async def one(n: int) -> int:
                    named = f"burst-{n % 50}" if n % 2 else None
                    response = await client.post(CHAT, json=body(f"burst {n}", named, n % 3 == 0))
                    return response.status_code

                return await asyncio.gather(*(one(n) for n in range(500)))

        statuses = asyncio.run(burst())
    assert statuses.count(200) == 500, {s: statuses.count(s) for s in set(statuses)}


def test_100_concurrent_turns_on_one_conversation(upstream: Upstream, redis_prefix: str) -> None:
    upstream.record = False
    with redis_palaver(upstream, redis_url_or_skip(), redis_prefix, max_messages=1000) as url:

        async def turns() -> list[tuple[int, float]]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

                async def one(n: int) -> tuple[int, float]:
                    started = time.monotonic()
                    response = await client.post(CHAT, json=body(f"turn {n}", "hot"))
                    return response.status_code, time.monotonic() - started

                return await asyncio.gather(*(one(n) for n in range(100)))

        results = asyncio.run(turns())
        stored = stored_texts(url, "hot")
    assert [status for status, _ in results] == [200] * 100
    assert sorted(stored) == sorted(f"turn {n}" for n in range(100))  # each exactly once
    took = sorted(seconds for _, seconds in results)
    print(f"100 concurrent turns on one conversation: p50 {took[49]:.3f} s, p99 {took[98]:.3f} s")
    assert took[98] < 2.0  # was 15.6 s with WATCH retries re-reading the whole history


@pytest.mark.parametrize("fault", ["debug-sleep", "sigstop"])
def test_redis_stalling_mid_load_stores_each_turn_once_or_not_at_all(
    upstream: Upstream, fault: str
) -> None:
    redis_url_or_skip()
    port = free_port()
    upstream.record = False
    redis_url = f"redis://127.0.0.1:{port}/0"
    with (
        private_redis(port) as server,
        redis_palaver(upstream, redis_url, "stall:", max_messages=10_000) as url,
    ):
        admin = sync_redis.Redis(port=port)

        async def load() -> list[tuple[str, str, bool]]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:

                async def one(n: int) -> tuple[str, str, bool]:
                    conversation, text = f"c{n % 5}", f"turn {n}"
                    await asyncio.sleep(n * 0.016)  # 4 s of steady load
                    stream = n % 4 == 0
                    try:
                        response = await client.post(CHAT, json=body(text, conversation, stream))
                    except httpx.TransportError:
                        return conversation, text, False
                    ok = response.status_code == 200
                    if stream:  # a stream succeeded only if it ended cleanly
                        ok = ok and '"error"' not in response.text
                        ok = ok and response.text.endswith("data: [DONE]\n\n")
                    return conversation, text, ok

                async def stall() -> None:
                    await asyncio.sleep(0.8)
                    if fault == "sigstop":
                        os.kill(server.pid, signal.SIGSTOP)
                        await asyncio.sleep(2.0)
                        os.kill(server.pid, signal.SIGCONT)
                    else:
                        await asyncio.to_thread(admin.execute_command, "DEBUG SLEEP 2")

                results, _ = await asyncio.gather(
                    asyncio.gather(*(one(n) for n in range(250))), stall()
                )
                return results

        results = asyncio.run(load())
        admin.close()
        time.sleep(1.2)  # queued scripts have run; the breaker lets calls through again
        stored = {f"c{n}": stored_texts(url, f"c{n}") for n in range(5)}
    failed = [text for _, text, ok in results if not ok]
    print(f"{fault}: {len(results) - len(failed)} turns stored, {len(failed)} refused")
    assert failed  # the stall was felt...
    assert all(ok for _, _, ok in results[-25:])  # ...and palaver recovered by itself
    for conversation, text, ok in results:
        assert stored[conversation].count(text) == (1 if ok else 0), (text, ok)
