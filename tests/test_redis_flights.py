"""Identical requests across palaver processes on one Redis: one upstream call, answers that
take longer than the lock's life, chunks relayed live, failures and dead leaders.

The lock lives 1 s here (``LOCK_SECONDS``, read when a palaver starts) so that the answers,
a few seconds long, outlive it several times over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from palaver.cache import redis_flights
from palaver.cache.redis import RedisCache
from palaver.cache.redis_flights import FlightBoard, Lease
from palaver.redis_link import RedisLink
from tests.conftest import provider_entry, redis_url_or_skip, run_palaver
from tests.servers import free_port
from tests.test_redis import private_redis
from tests.upstream import Upstream

LOCK = 1.0
WORDS = "one two three four five six seven eight nine ten"
USER: Any = [{"role": "user", "content": WORDS}]
ANSWER = f"[up1] {WORDS}"


def _settings(upstream: Upstream, prefix: str) -> dict[str, Any]:
    return {
        "providers": [provider_entry(upstream)],
        "cache": {"enabled": True, "backend": "redis"},
        "redis": {"url": redis_url_or_skip(), "key_prefix": prefix},
    }


@pytest.fixture
def short_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_flights, "LOCK_SECONDS", LOCK)


@pytest.fixture
def two_palavers(
    upstream: Upstream, redis_prefix: str, short_lock: None
) -> Iterator[tuple[str, str]]:
    settings = _settings(upstream, redis_prefix)
    providers = settings.pop("providers")
    with run_palaver(providers, **settings) as one, run_palaver(providers, **settings) as two:
        yield one, two


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=30)


async def _stream(url: str, **params: Any) -> tuple[str, float | None, float, Any]:
    """The text, when its first content came and when it ended, and the last chunk."""
    async with _client(url) as client:
        chunks = await client.chat.completions.create(
            model="m", messages=USER, stream=True, **params
        )
        text, first, last = "", None, None
        async for chunk in chunks:
            last = chunk
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.monotonic()
                text += chunk.choices[0].delta.content
    return text, first, time.monotonic(), last


async def _complete(url: str) -> tuple[str, Any]:
    async with _client(url) as client:
        raw = await client.chat.completions.with_raw_response.create(model="m", messages=USER)
    reply = raw.parse()
    return reply.choices[0].message.content or "", raw


async def test_a_stream_longer_than_the_lock_reaches_upstream_once_and_is_relayed_live(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    upstream.behave(chunk_delay=0.25)  # ~13 chunks: about 3 s, three lock lifetimes
    leader = asyncio.create_task(_stream(one))
    await asyncio.sleep(0.3)
    early = asyncio.create_task(_stream(two, stream_options={"include_usage": True}))
    await asyncio.sleep(LOCK * 1.5)  # the first lock would have expired by now
    late = asyncio.create_task(_stream(two))
    whole = asyncio.create_task(_complete(two))
    (text, _, ended, last), (early_text, early_first, _, usage_chunk) = await asyncio.gather(
        leader, early
    )
    late_text, late_first, _, _ = await late
    assert text == early_text == late_text == ANSWER
    assert last.choices  # the leader did not ask for usage
    assert last.usage is None
    assert usage_chunk.choices == []
    assert usage_chunk.usage.total_tokens == 12
    assert early_first is not None
    assert late_first is not None
    assert early_first < ended - 1.5  # relayed while produced, not after
    assert late_first < ended - 0.5
    content, raw = await whole
    assert content == ANSWER
    assert raw.headers["x-cache"] == "HIT"
    assert raw.parse().usage.total_tokens == 12
    assert len(upstream.chat_requests) == 1


async def test_followers_waiting_before_the_first_byte(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    upstream.behave(first_byte_delay=LOCK * 1.5, chunk_delay=0.05)
    leader = asyncio.create_task(_stream(one))
    await asyncio.sleep(0.2)
    followers = await asyncio.gather(
        *(_stream(two) for _ in range(5)), *(_complete(two) for _ in range(5))
    )
    assert (await leader)[0] == ANSWER
    assert [f[0] for f in followers] == [ANSWER] * 10
    assert len(upstream.chat_requests) == 1


async def test_a_leader_failing_mid_stream_fails_its_followers_alike(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    upstream.behave(chunk_delay=0.3, cut_after=6)

    async def raw_stream(url: str) -> list[str]:
        async with (
            _client(url) as client,
            client.chat.completions.with_streaming_response.create(
                model="m", messages=USER, stream=True
            ) as response,
        ):
            return [line async for line in response.iter_lines() if line]

    leader = asyncio.create_task(raw_stream(one))
    await asyncio.sleep(0.5)
    follower = await raw_stream(two)
    for lines in (await leader, follower):
        assert lines[-1] == "data: [DONE]"
        assert lines[-2].startswith('data: {"error"')
        assert "stream" in lines[-2]
        assert len(lines) > 3  # chunks came before the failure
    upstream.behave(status=500, first_byte_delay=0.5)
    whole = asyncio.create_task(_complete(one))
    await asyncio.sleep(0.2)
    with pytest.raises(openai.InternalServerError) as failed:
        await _complete(two)
    with pytest.raises(openai.InternalServerError):
        await whole
    assert "500" in failed.value.message
    assert len(upstream.chat_requests) == 2


async def test_the_leaders_client_leaving_does_not_cancel_other_processes_followers(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    upstream.behave(chunk_delay=0.15)
    leader = asyncio.create_task(_stream(one))
    await asyncio.sleep(0.3)
    follower = asyncio.create_task(_stream(two))
    await asyncio.sleep(0.3)
    leader.cancel()  # the leader's client goes away; a client elsewhere still listens
    assert (await follower)[0] == ANSWER
    assert upstream.disconnects == []
    assert len(upstream.chat_requests) == 1


async def test_the_call_is_cancelled_when_no_client_anywhere_listens(
    two_palavers: tuple[str, str], upstream: Upstream
) -> None:
    one, two = two_palavers
    upstream.behave(chunk_delay=0.3)
    clients: list[asyncio.Task[Any]] = [asyncio.create_task(_stream(one))]
    await asyncio.sleep(0.2)
    clients.append(asyncio.create_task(_complete(two)))
    await asyncio.sleep(0.3)
    for client in clients:
        client.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    for _ in range(40):  # within a renewal round or two
        if upstream.disconnects:
            break
        await asyncio.sleep(0.05)
    assert len(upstream.disconnects) == 1


# --- a leader that dies ---------------------------------------------------------------------

_RUN = (
    "import sys; from palaver.cache import redis_flights; "
    "redis_flights.LOCK_SECONDS = float(sys.argv[1]); "
    "from palaver.cli import main; sys.exit(main(sys.argv[2:]))"
)


@contextmanager
def _palaver_process(config: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``palaver serve`` in a process of its own (one the test can kill), with a short lock."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-c", _RUN, str(LOCK), "serve", "--config", str(config)],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, "palaver exited"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "palaver did not start"
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()


@pytest.fixture
def doomed_and_survivor(
    upstream: Upstream, redis_prefix: str, short_lock: None, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    config = tmp_path / "palaver.toml"
    config.write_text(
        f"""
[[providers]]
name = "{upstream.name}"
base_url = "{upstream.url}/v1"
models = ["*"]

[cache]
backend = "redis"

[conversations]
backend = "memory"

[redis]
url = "{redis_url_or_skip()}"
key_prefix = "{redis_prefix}"
"""
    )
    settings = _settings(upstream, redis_prefix)
    providers = settings.pop("providers")
    with ExitStack() as stack:
        doomed, doomed_url = stack.enter_context(_palaver_process(config))
        survivor = stack.enter_context(run_palaver(providers, **settings))
        yield doomed, doomed_url, survivor


async def test_a_dead_leaders_stream_followers_fail_cleanly(
    doomed_and_survivor: tuple[subprocess.Popen[bytes], str, str], upstream: Upstream
) -> None:
    doomed, doomed_url, survivor = doomed_and_survivor
    upstream.behave(chunk_delay=0.3)
    leader = asyncio.create_task(_stream(doomed_url))
    await asyncio.sleep(0.4)
    follower = asyncio.create_task(_stream(survivor))
    await asyncio.sleep(0.6)
    doomed.kill()  # no goodbye: its lock must expire
    killed = time.monotonic()
    with pytest.raises(openai.APIError) as failed:
        await asyncio.wait_for(follower, 10)
    assert time.monotonic() - killed < LOCK * 3
    assert "stopped before finishing" in failed.value.message
    with pytest.raises(openai.APIConnectionError):
        await leader
    assert len(upstream.chat_requests) == 1


async def test_followers_of_a_leader_that_died_before_answering_take_over(
    doomed_and_survivor: tuple[subprocess.Popen[bytes], str, str], upstream: Upstream
) -> None:
    doomed, doomed_url, survivor = doomed_and_survivor
    upstream.behave(first_byte_delay=5, times=1)
    leader = asyncio.create_task(_complete(doomed_url))
    await asyncio.sleep(0.4)
    followers = [asyncio.create_task(_stream(survivor)), asyncio.create_task(_complete(survivor))]
    await asyncio.sleep(0.3)
    doomed.kill()
    killed = time.monotonic()
    streamed, completed = await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert streamed[0] == completed[0] == ANSWER
    assert time.monotonic() - killed < LOCK * 3 + 1
    with pytest.raises(openai.APIConnectionError):
        await leader
    assert len(upstream.chat_requests) == 2


async def test_redis_going_away_mid_flight_hangs_nobody(
    upstream: Upstream, short_lock: None
) -> None:
    redis_url_or_skip()
    port = free_port()
    settings = _settings(upstream, "gone:")
    settings["redis"]["url"] = f"redis://127.0.0.1:{port}/0"
    providers = settings.pop("providers")
    upstream.behave(chunk_delay=0.2)
    with (
        private_redis(port) as redis_server,
        run_palaver(providers, **settings) as one,
        run_palaver(providers, **settings) as two,
    ):
        leader = asyncio.create_task(_stream(one))
        await asyncio.sleep(0.3)
        follower = asyncio.create_task(_stream(two))
        await asyncio.sleep(0.4)
        redis_server.terminate()
        gone = time.monotonic()
        assert (await leader)[0] == ANSWER  # the leader's own client is served to the end
        with pytest.raises(openai.APIError):
            await asyncio.wait_for(follower, 10)
        assert time.monotonic() - gone < LOCK * 3 + 1
    assert len(upstream.chat_requests) == 1


# --- the lock itself ------------------------------------------------------------------------


async def test_a_lease_keeps_its_lock_until_released(redis_prefix: str) -> None:
    link = RedisLink(redis_url_or_skip(), redis_prefix)
    board = FlightBoard(link, lock_seconds=0.3)
    try:
        lease = await board.claim("k")
        assert isinstance(lease, Lease)
        assert await board.claim("k") == lease.token  # another process would follow it
        lease.bind(lambda: False, lambda: None)
        await asyncio.sleep(1.0)  # more than three lifetimes
        assert await link.client.get(lease.lock_key) == lease.token.encode()
        await lease.release()
        assert await link.client.get(lease.lock_key) is None
        again = await board.claim("k")
        assert isinstance(again, Lease)  # not renewed, it expires
        await asyncio.sleep(0.4)
        assert await link.client.get(again.lock_key) is None
    finally:
        await board.close()
        await link.close()


async def test_cache_lock_and_unlock_still_work(redis_prefix: str) -> None:
    link = RedisLink(redis_url_or_skip(), redis_prefix)
    cache = RedisCache(link, ttl=10)
    try:
        token = await cache.lock("k")
        assert token
        assert await cache.lock("k") is None
        await cache.unlock("k", token)
        assert await cache.lock("k")
    finally:
        await cache.close()
        await link.close()
