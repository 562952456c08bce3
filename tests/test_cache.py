"""The response cache end to end: keys, HIT/MISS/BYPASS, replay, TTL, bounds, single-flight."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import openai
import orjson
import pytest

from palaver.cache import MemoryCache, cache_key, policy_of
from palaver.cache.flights import Flights
from palaver.errors import PalaverError
from palaver.providers import ProviderRouter
from palaver.providers.echo import EchoProvider
from palaver.streaming import CompletionAccumulator, replay_chunks
from tests.conftest import provider_entry, run_palaver
from tests.upstream import Upstream

USER: Any = [{"role": "user", "content": "cache me if you can"}]
CACHE = {"enabled": True, "ttl_seconds": 300}


@pytest.fixture
def cached_url(upstream: Upstream) -> Iterator[str]:
    with run_palaver([provider_entry(upstream)], cache=CACHE) as url:
        yield url


def client_for(url: str, key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


def create(client: openai.OpenAI, **params: Any) -> Any:
    params.setdefault("model", "m")
    params.setdefault("messages", USER)
    return client.chat.completions.with_raw_response.create(**params)


# --- units ---------------------------------------------------------------------------------


def test_key_ignores_order_stream_and_user_but_not_the_rest() -> None:
    base = {"model": "m", "messages": USER, "temperature": 0.5}
    key = cache_key("t", base)
    assert cache_key("t", {"temperature": 0.5, "messages": USER, "model": "m"}) == key
    same = {**base, "stream": True, "stream_options": {"include_usage": True}, "user": "bob"}
    assert cache_key("t", same) == key
    for change in (
        {"temperature": 0.7},
        {"model": "n"},
        {"max_tokens": 5},
        {"messages": [{"role": "user", "content": "other"}]},
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"n": 2},
    ):
        assert cache_key("t", {**base, **change}) != key
    assert cache_key("other-tenant", base) != key


def test_policy_from_cache_control() -> None:
    assert policy_of(None) is not None
    no_cache = policy_of(b"no-cache")
    assert no_cache is not None
    assert (no_cache.lookup, no_cache.store) == (False, True)
    no_store = policy_of(b"No-Store, max-age=0")
    assert no_store is not None
    assert (no_store.lookup, no_store.store) == (True, False)
    assert policy_of(b"no-cache, no-store") is None


async def test_memory_cache_bounds_and_ttl() -> None:
    def entry(size: int) -> dict[str, Any]:
        return {"text": "x" * size}

    cache = MemoryCache(ttl=300, max_entries=3, max_bytes=10_000)
    for n in range(5):
        await cache.set(f"k{n}", entry(100))
    assert cache.size[0] == 3
    assert await cache.get("k0") is None
    assert await cache.get("k4") == entry(100)
    await cache.get("k2")  # k2 used: k3 is now the least recently used
    await cache.set("k5", entry(1))
    assert await cache.get("k3") is None
    assert await cache.get("k2") is not None

    heavy = MemoryCache(ttl=300, max_entries=1000, max_bytes=5_000)
    for n in range(100):
        await heavy.set(f"k{n}", entry(1000))
        assert heavy.size[1] <= 5_000
    assert heavy.size[0] == 4  # each weighs its JSON size plus the fixed overhead
    await heavy.set("huge", entry(10_000))  # bigger than the whole budget: not stored
    assert await heavy.get("huge") is None

    short = MemoryCache(ttl=0.05, max_entries=10, max_bytes=10_000)
    await short.set("k", entry(1))
    assert await short.get("k") == entry(1)
    await asyncio.sleep(0.08)
    assert await short.get("k") is None
    assert short.size == (0, 0)


def test_replay_round_trips_a_completion() -> None:
    completion = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, world", "refusal": None},
                "logprobs": {"content": [{"token": "Hello", "logprob": -0.1}]},
                "finish_reason": "stop",
            },
            {
                "index": 1,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            },
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    chunks = replay_chunks(completion, include_usage=True)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["id"] != "chatcmpl-x"
    assert sum(1 for c in chunks if c["choices"] and c["choices"][0]["index"] == 0) >= 5
    whole = CompletionAccumulator()
    for chunk in chunks:
        whole.add(chunk)
    rebuilt = whole.completion()
    assert rebuilt["choices"] == completion["choices"]
    assert rebuilt["usage"] == completion["usage"]
    assert rebuilt["system_fingerprint"] == "fp"


# --- end to end ----------------------------------------------------------------------------


def test_same_request_twice_is_one_upstream_call(cached_url: str, upstream: Upstream) -> None:
    with client_for(cached_url) as client:
        first = create(client)
        second = create(client)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert len(upstream.chat_requests) == 1
    one, two = first.parse(), second.parse()
    assert one.choices[0].message.content == two.choices[0].message.content
    assert one.id != two.id
    assert two.usage is not None
    assert two.usage.total_tokens == 12


@pytest.mark.parametrize(
    "change",
    [
        {"temperature": 0.9},
        {"model": "other"},
        {"max_tokens": 7},
        {"messages": [{"role": "user", "content": "something else"}]},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"extra_body": {"top_k": 3}},
    ],
)
def test_output_affecting_changes_miss(
    cached_url: str, upstream: Upstream, change: dict[str, Any]
) -> None:
    with client_for(cached_url) as client:
        assert create(client, temperature=0.2).headers["x-cache"] == "MISS"
        assert create(client, **{"temperature": 0.2, **change}).headers["x-cache"] == "MISS"
        assert create(client, temperature=0.2, user="someone").headers["x-cache"] == "HIT"
    assert len(upstream.chat_requests) == 2


def test_json_key_order_does_not_matter(cached_url: str, upstream: Upstream) -> None:
    url = cached_url + "/v1/chat/completions"
    headers = {"content-type": "application/json"}
    one = b'{"model": "m", "temperature": 1, "messages": [{"role": "user", "content": "x"}]}'
    two = b'{"messages": [{"content": "x", "role": "user"}], "temperature": 1, "model": "m"}'
    assert httpx.post(url, content=one, headers=headers).headers["x-cache"] == "MISS"
    assert httpx.post(url, content=two, headers=headers).headers["x-cache"] == "HIT"
    assert len(upstream.chat_requests) == 1


def _stream_text(client: openai.OpenAI, **params: Any) -> tuple[str, list[Any], str]:
    raw = client.chat.completions.with_raw_response.create(
        model="m", messages=USER, stream=True, **params
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks, raw.headers["x-cache"]


def _well_formed(chunks: list[Any], usage: bool) -> None:
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert content[-1].choices[0].finish_reason == "stop"
    if usage:
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
    else:
        assert chunks[-1].choices


def test_stream_from_a_non_stream_entry(cached_url: str, upstream: Upstream) -> None:
    with client_for(cached_url) as client:
        create(client)
        text, chunks, status = _stream_text(client, stream_options={"include_usage": True})
    assert status == "HIT"
    assert text == "[up1] cache me if you can"
    assert len([c for c in chunks if c.choices]) >= 5  # content in several chunks
    _well_formed(chunks, usage=True)
    assert len(upstream.chat_requests) == 1


def test_non_stream_from_a_stream_entry(cached_url: str, upstream: Upstream) -> None:
    with client_for(cached_url) as client:
        text, chunks, status = _stream_text(client, stream_options={"include_usage": True})
        assert status == "MISS"
        _well_formed(chunks, usage=True)
        hit = create(client)
        again, chunks, status = _stream_text(client)
    assert hit.headers["x-cache"] == "HIT"
    reply = hit.parse()
    assert reply.choices[0].message.content == text == again
    assert reply.usage is not None
    assert reply.usage.total_tokens == 12
    assert status == "HIT"
    _well_formed(chunks, usage=False)
    assert len(upstream.chat_requests) == 1


def test_tool_calls_and_n_survive_the_cache(cached_url: str, upstream: Upstream) -> None:
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    with client_for(cached_url) as client:
        first = create(client, tools=tools, n=2).parse()
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=USER, tools=tools, n=2, stream=True
        )
        chunks = list(raw.parse())
    assert raw.headers["x-cache"] == "HIT"
    for index in (0, 1):
        arguments = "".join(
            call.function.arguments or ""
            for c in chunks
            for choice in c.choices
            if choice.index == index
            for call in choice.delta.tool_calls or []
            if call.function
        )
        assert json.loads(arguments) == {"city": "Paris"}
        assert first.choices[index].message.tool_calls is not None
    assert len(upstream.chat_requests) == 1


def test_ttl_expiry(upstream: Upstream) -> None:
    with (
        run_palaver([provider_entry(upstream)], cache={"ttl_seconds": 0.3}) as url,
        client_for(url) as client,
    ):
        assert create(client).headers["x-cache"] == "MISS"
        assert create(client).headers["x-cache"] == "HIT"
        time.sleep(0.4)
        assert create(client).headers["x-cache"] == "MISS"
    assert len(upstream.chat_requests) == 2


def test_max_entries_evicts_least_recently_used(upstream: Upstream) -> None:
    with (
        run_palaver([provider_entry(upstream)], cache={"max_entries": 2}) as url,
        client_for(url) as client,
    ):

        def ask(text: str) -> Any:
            return create(client, messages=[{"role": "user", "content": text}])

        ask("a")
        ask("b")
        assert ask("a").headers["x-cache"] == "HIT"
        ask("c")  # b is the least recently used: out
        assert ask("a").headers["x-cache"] == "HIT"
        assert ask("b").headers["x-cache"] == "MISS"


def test_cache_control_no_cache_and_no_store(cached_url: str, upstream: Upstream) -> None:
    with client_for(cached_url) as client:
        no_store = create(client, extra_headers={"Cache-Control": "no-store"})
        assert no_store.headers["x-cache"] == "MISS"
        assert create(client).headers["x-cache"] == "MISS"  # nothing was stored
        assert create(client).headers["x-cache"] == "HIT"
        fresh = create(client, extra_headers={"Cache-Control": "no-cache"})
        assert fresh.headers["x-cache"] == "MISS"  # lookup skipped...
        both = create(client, extra_headers={"Cache-Control": "no-cache, no-store"})
        assert both.headers["x-cache"] == "BYPASS"
        streamed = client.chat.completions.with_raw_response.create(
            model="m", messages=USER, stream=True, extra_headers={"Cache-Control": "no-cache"}
        )
        list(streamed.parse())
        assert streamed.headers["x-cache"] == "MISS"
    assert len(upstream.chat_requests) == 5


def test_disabled_cache_is_bypass_on_every_response(palaver_url: str) -> None:
    with client_for(palaver_url) as client:
        assert create(client).headers["x-cache"] == "BYPASS"
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=USER, stream=True
        )
        list(raw.parse())
        assert raw.headers["x-cache"] == "BYPASS"


@pytest.mark.parametrize(
    "behaviour", [{"status": 500}, {"status": 400}, {"cut_after": 3}, {"not_json": True}]
)
def test_errors_and_cut_streams_are_not_cached(
    cached_url: str, upstream: Upstream, behaviour: dict[str, Any]
) -> None:
    with client_for(cached_url) as client:
        upstream.behave(**behaviour)
        if "cut_after" not in behaviour:  # a cut only happens to streams
            with pytest.raises(openai.APIError):
                create(client)
        with pytest.raises(openai.APIError):
            _stream_text(client)
        upstream.behave()
        assert create(client).headers["x-cache"] == "MISS"


def test_one_keys_entry_is_never_served_to_another(upstream: Upstream) -> None:
    server = {"api_keys": ["sk-a", "sk-b"]}
    with run_palaver([provider_entry(upstream)], cache=CACHE, server=server) as url:
        with client_for(url, "sk-a") as a:
            assert create(a).headers["x-cache"] == "MISS"
            assert create(a).headers["x-cache"] == "HIT"
        with client_for(url, "sk-b") as b:
            assert create(b).headers["x-cache"] == "MISS"
    assert len(upstream.chat_requests) == 2


def test_a_hit_still_records_the_turn(upstream: Upstream) -> None:
    with (
        run_palaver([provider_entry(upstream)], cache=CACHE) as url,
        client_for(url) as client,
    ):
        create(client, extra_body={"conversation": "first"})
        hit = create(client, extra_body={"conversation": "second"})
        assert hit.headers["x-cache"] == "HIT"
        assert hit.headers["x-conversation-id"] == "second"
        streamed = client.chat.completions.with_raw_response.create(
            model="m", messages=USER, stream=True, extra_body={"conversation": "third"}
        )
        list(streamed.parse())
        assert streamed.headers["x-cache"] == "HIT"
        for name in ("second", "third"):
            items = list(client.conversations.items.list(name))
            assert [i.role for i in items] == ["user", "assistant"]  # type: ignore[union-attr]
    assert len(upstream.chat_requests) == 1


# --- single-flight -------------------------------------------------------------------------


async def _one(client: openai.AsyncOpenAI, stream: bool) -> str:
    if not stream:
        reply = await client.chat.completions.create(model="m", messages=USER)
        return reply.choices[0].message.content or ""
    chunks = await client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    text = ""
    finished = False
    async for chunk in chunks:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finished = finished or chunk.choices[0].finish_reason == "stop"
    assert finished
    return text


async def test_fifty_concurrent_identical_requests_one_upstream_call(
    cached_url: str, upstream: Upstream
) -> None:
    upstream.behave(first_byte_delay=0.3, chunk_delay=0.02)
    async with openai.AsyncOpenAI(
        base_url=cached_url + "/v1", api_key="k", max_retries=0, timeout=30
    ) as client:
        texts = await asyncio.gather(*(_one(client, n % 2 == 0) for n in range(50)))
    assert texts == ["[up1] cache me if you can"] * 50
    assert len(upstream.chat_requests) == 1


async def test_late_stream_joiner_gets_what_was_already_produced(
    cached_url: str, upstream: Upstream
) -> None:
    upstream.behave(chunk_delay=0.1)
    async with openai.AsyncOpenAI(base_url=cached_url + "/v1", api_key="k", max_retries=0) as c:
        leader = asyncio.create_task(_one(c, True))
        await asyncio.sleep(0.35)  # a few chunks have gone out
        late = await _one(c, True)
        assert await leader == late == "[up1] cache me if you can"
    assert len(upstream.chat_requests) == 1


async def test_failing_leader_leaves_no_follower_hanging(
    cached_url: str, upstream: Upstream
) -> None:
    upstream.behave(first_byte_delay=0.3, status=503)
    async with openai.AsyncOpenAI(base_url=cached_url + "/v1", api_key="k", max_retries=0) as c:
        started = time.monotonic()
        results = await asyncio.gather(
            *(_one(c, n % 2 == 0) for n in range(10)), return_exceptions=True
        )
    assert all(isinstance(r, openai.InternalServerError) for r in results)
    assert time.monotonic() - started < 3
    assert len(upstream.chat_requests) == 1


async def test_cancelled_leader_does_not_cancel_followers(
    cached_url: str, upstream: Upstream
) -> None:
    upstream.behave(chunk_delay=0.05)
    async with openai.AsyncOpenAI(base_url=cached_url + "/v1", api_key="k", max_retries=0) as c:
        leader = asyncio.create_task(_one(c, False))
        await asyncio.sleep(0.15)
        followers = [asyncio.create_task(_one(c, n % 2 == 0)) for n in range(4)]
        await asyncio.sleep(0.1)
        leader.cancel()  # the leader's client goes away
        texts = await asyncio.gather(*followers)
    assert texts == ["[up1] cache me if you can"] * 4
    assert len(upstream.chat_requests) == 1
    assert upstream.disconnects == []


async def test_all_subscribers_gone_cancels_upstream(cached_url: str, upstream: Upstream) -> None:
    upstream.behave(hang=True)
    async with openai.AsyncOpenAI(base_url=cached_url + "/v1", api_key="k", max_retries=0) as c:
        tasks = [asyncio.create_task(_one(c, n % 2 == 0)) for n in range(3)]
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(100):
        if upstream.disconnects:
            break
        await asyncio.sleep(0.01)
    assert len(upstream.disconnects) == 1


def test_cached_body_is_compact_json(cached_url: str) -> None:
    with client_for(cached_url) as client:
        create(client)
        hit = create(client, extra_body={"conversation": "compact"})
        assert hit.headers["x-cache"] == "HIT"
        body = hit.http_response.content
    parsed = orjson.loads(body)
    assert parsed["object"] == "chat.completion"
    assert parsed["conversation"] == "compact"


def test_a_stream_without_include_usage_still_caches_the_usage(
    cached_url: str, upstream: Upstream
) -> None:
    with client_for(cached_url) as client:
        text, chunks, status = _stream_text(client, stream_options={"something": 1})
        assert status == "MISS"
        _well_formed(chunks, usage=False)  # the client that did not ask sees no usage chunk
        assert all(c.usage is None for c in chunks)
        hit = create(client)
        again, with_usage, hit_status = _stream_text(client, stream_options={"include_usage": True})
    assert hit.headers["x-cache"] == hit_status == "HIT"
    usage = hit.parse().usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (5, 7, 12)
    sent = upstream.chat_requests[0].body
    assert sent["stream_options"] == {"something": 1, "include_usage": True}
    _well_formed(with_usage, usage=True)
    assert with_usage[-1].usage.total_tokens == 12
    assert again == text
    assert len(upstream.chat_requests) == 1


async def test_a_flight_cancelled_before_it_starts_still_lands() -> None:
    router = ProviderRouter([(EchoProvider(), ["*"])])
    flights = Flights(router, MemoryCache(ttl=60, max_entries=10, max_bytes=100_000))
    payload: dict[str, Any] = {"model": "m", "messages": USER}
    flight, leads = await flights.board("m", payload, streaming=False, share="k", store="k")
    assert leads
    flight.join()
    flight.leave()  # its only client went away before the call even began
    joined, leads = await flights.board("m", payload, streaming=False, share="k", store="k")
    assert not leads  # still in the air for an instant: a second request joins it...
    joined.join()
    try:
        with pytest.raises(PalaverError):
            await asyncio.wait_for(joined.result(), 1)  # ...and learns it failed, never hangs
    finally:
        joined.leave()
    assert flights.find("k") is None
    await flights.close()
