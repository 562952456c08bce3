"""Conversations end to end through the openai SDK, with the loopback upstream recording."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import openai
import pytest

from tests.conftest import provider_entry, redis_url_or_skip, run_palaver, run_upstream
from tests.upstream import Upstream

SYSTEM = {"role": "system", "content": "You are terse."}


def client_for(url: str, key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=20)


@pytest.fixture
def sqlite_palaver(upstream: Upstream, tmp_path: Path) -> Iterator[str]:
    conversations = {"backend": "sqlite", "path": str(tmp_path / "c.sqlite3")}
    with run_palaver([provider_entry(upstream)], conversations=conversations) as url:
        yield url


def ask(client: openai.OpenAI, conversation: str, messages: list[Any], **extra: Any) -> Any:
    return client.chat.completions.create(
        model="m", messages=messages, extra_body={"conversation": conversation, **extra}
    )


def texts(items: Any) -> list[str]:
    """The text of each message item (the SDK types items as a wide union)."""
    return [item.content[0].text for item in items]


def sent_texts(upstream: Upstream, request: int = -1) -> list[str]:
    return [m["content"] for m in upstream.chat_requests[request].body["messages"]]


def test_client_sending_only_new_messages(sqlite_palaver: str, upstream: Upstream) -> None:
    with client_for(sqlite_palaver) as client:
        first = ask(client, "trip", [SYSTEM, {"role": "user", "content": "Paris?"}])
        assert first.choices[0].message.content == "[up1] Paris?"
        assert first.model_extra is not None
        assert first.model_extra["conversation"] == "trip"
        ask(client, "trip", [{"role": "user", "content": "And Rome?"}])
        third = client.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "Which is bigger?"}],
            extra_headers={"X-Conversation-Id": "trip"},
        )
    assert third.headers["x-conversation-id"] == "trip"
    assert sent_texts(upstream) == [
        "You are terse.",
        "Paris?",
        "[up1] Paris?",
        "And Rome?",
        "[up1] And Rome?",
        "Which is bigger?",
    ]
    assert "conversation" not in upstream.chat_requests[-1].body


def test_client_sending_whole_transcript(sqlite_palaver: str, upstream: Upstream) -> None:
    transcript: list[Any] = [SYSTEM]
    with client_for(sqlite_palaver) as client:
        for question in ["one", "two", "three"]:
            transcript.append({"role": "user", "content": question})
            reply = ask(client, "whole", transcript)
            transcript.append({"role": "assistant", "content": reply.choices[0].message.content})
        items = list(client.conversations.items.list("whole"))
    assert sent_texts(upstream) == [m["content"] for m in transcript[:-1]]
    assert texts(items) == [m["content"] for m in transcript]  # nothing stored twice


def test_streaming_turns_are_stored_with_tool_calls(
    sqlite_palaver: str, upstream: Upstream
) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    with client_for(sqlite_palaver) as client:
        stream = client.chat.completions.with_raw_response.create(
            model="m",
            messages=[{"role": "user", "content": "weather?"}],
            tools=tools,
            stream=True,
            extra_body={"conversation": "tools"},
        )
        assert stream.headers["x-conversation-id"] == "tools"
        list(stream.parse())
        follow_up: Any = [{"role": "tool", "tool_call_id": "call_0", "content": "sunny"}]
        list(
            client.chat.completions.create(
                model="m", messages=follow_up, stream=True, extra_body={"conversation": "tools"}
            )
        )
        items = list(client.conversations.items.list("tools"))
    stored = upstream.chat_requests[-1].body["messages"]
    assert stored[1]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    assert stored[2] == {"role": "tool", "tool_call_id": "call_0", "content": "sunny"}
    assert [item.type for item in items] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


def test_auto_create_and_continue(upstream: Upstream) -> None:
    settings = {"backend": "memory", "auto_create": True}
    with (
        run_palaver([provider_entry(upstream)], conversations=settings) as url,
        client_for(url) as client,
    ):
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}]
        )
        conversation = raw.headers["x-conversation-id"]
        assert conversation.startswith("conv_")
        assert raw.parse().model_extra == {"conversation": conversation}
        ask(client, conversation, [{"role": "user", "content": "again"}])
    assert sent_texts(upstream) == ["hi", "[up1] hi", "again"]


def test_stateless_requests_start_no_conversation_by_default(upstream: Upstream) -> None:
    """auto_create is off by default: stateless requests store nothing and evict nothing."""
    settings = {"backend": "memory", "max_active": 5}
    with run_palaver([provider_entry(upstream)], conversations=settings) as url:
        with client_for(url) as client:
            ask(client, "named", [{"role": "user", "content": "keep me"}])
        for text in ("a", "b", "c", "d", "e", "f"):
            response = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "m", "messages": [{"role": "user", "content": text}]},
            )
            assert "x-conversation-id" not in response.headers
            assert "conversation" not in response.json()
        listed = httpx.get(url + "/v1/conversations").json()
    assert [c["id"] for c in listed["data"]] == ["named"]


def test_sdk_conversation_calls(palaver_url: str, upstream: Upstream) -> None:
    with client_for(palaver_url) as client:
        created = client.conversations.create(
            items=[{"type": "message", "role": "system", "content": "Answer in French."}],
            metadata={"topic": "demo"},
        )
        assert created.object == "conversation"
        assert created.metadata == {"topic": "demo"}
        added = client.conversations.items.create(
            created.id, items=[{"type": "message", "role": "user", "content": "Bonjour"}]
        )
        assert [item.role for item in added.data] == ["user"]  # type: ignore[union-attr]
        ask(client, created.id, [{"role": "user", "content": "Ça va?"}])
        assert sent_texts(upstream) == ["Answer in French.", "Bonjour", "Ça va?"]
        retrieved = client.conversations.retrieve(created.id)
        assert retrieved.id == created.id
        assert retrieved.model_extra is not None
        assert retrieved.model_extra["message_count"] == 4
        items = client.conversations.items.list(created.id, limit=2)
        assert [i.role for i in items.data] == ["system", "user"]  # type: ignore[union-attr]
        assert items.has_more
        everything = list(client.conversations.items.list(created.id, limit=2))
        assert [i.role for i in everything] == ["system", "user", "user", "assistant"]  # type: ignore[union-attr]
        newest = client.conversations.items.list(created.id, order="desc", limit=1)
        assert texts(newest.data) == ["[up1] Ça va?"]
        one = client.conversations.items.retrieve(str(everything[1].id), conversation_id=created.id)
        assert one.id == everything[1].id
        client.conversations.update(created.id, metadata={"topic": "changed"})
        assert client.conversations.retrieve(created.id).metadata == {"topic": "changed"}
        deleted = client.conversations.delete(created.id)
        assert deleted.deleted
        assert deleted.id == created.id
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(created.id)
        with pytest.raises(openai.NotFoundError):
            client.conversations.items.list("conv_missing").data  # noqa: B018


def test_listing_conversations_newest_first(palaver_url: str) -> None:
    with client_for(palaver_url) as client:
        ids = [client.conversations.create().id for _ in range(5)]
        ask(client, ids[0], [{"role": "user", "content": "x"}])
        first = httpx.get(palaver_url + "/v1/conversations", params={"limit": 3}).json()
        assert [c["id"] for c in first["data"]] == ids[::-1][:3]
        assert first["has_more"] is True
        rest = httpx.get(
            palaver_url + "/v1/conversations", params={"limit": 3, "after": first["last_id"]}
        ).json()
        assert [c["id"] for c in rest["data"]] == ids[::-1][3:]
        assert rest["has_more"] is False
        counts = {c["id"]: c["message_count"] for c in first["data"] + rest["data"]}
        assert counts[ids[0]] == 2
        assert {"created_at", "updated_at"} <= set(rest["data"][0])


def test_bad_conversation_input(palaver_url: str, upstream: Upstream) -> None:
    chat = palaver_url + "/v1/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    cases = [
        (httpx.post(chat, json={**body, "conversation": "no spaces"}), 400, "conversation"),
        (httpx.post(chat, json=body, headers={"x-conversation-id": "bad/id"}), 400, "conversation"),
        (
            httpx.post(
                chat, json={**body, "conversation": "a"}, headers={"x-conversation-id": "b"}
            ),
            400,
            "conversation",
        ),
        (httpx.post(palaver_url + "/v1/conversations", content=b"{"), 400, None),
        (
            httpx.post(palaver_url + "/v1/conversations", json={"metadata": {"a": 1}}),
            400,
            "metadata.a",
        ),
        (
            httpx.post(palaver_url + "/v1/conversations", json={"items": [{"type": "x"}]}),
            400,
            "items[0].type",
        ),
        (httpx.get(palaver_url + "/v1/conversations", params={"limit": 0}), 400, "limit"),
        (httpx.put(palaver_url + "/v1/conversations/abc"), 405, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == param
    assert upstream.requests == []


def test_cap_keeps_priority_order(upstream: Upstream) -> None:
    settings = {"backend": "memory", "max_messages": 4}
    with (
        run_palaver([provider_entry(upstream)], conversations=settings) as url,
        client_for(url) as c,
    ):
        ask(c, "capped", [SYSTEM, {"role": "user", "content": "u1"}])
        ask(c, "capped", [{"role": "user", "content": "u2"}])
        ask(c, "capped", [{"role": "user", "content": "u3"}])
        items = list(c.conversations.items.list("capped"))
    # assistants went first, then the oldest user message; the system message stayed
    assert texts(items) == ["You are terse.", "u2", "u3", "[up1] u3"]
    # what went upstream for u3: capped at 4, the assistant reply dropped before any user turn
    assert sent_texts(upstream) == ["You are terse.", "u1", "u2", "u3"]


def test_least_recently_used_conversations_are_removed(upstream: Upstream) -> None:
    settings = {"backend": "memory", "max_active": 3}
    with (
        run_palaver([provider_entry(upstream)], conversations=settings) as url,
        client_for(url) as c,
    ):
        for name in ["c1", "c2", "c3"]:
            ask(c, name, [{"role": "user", "content": name}])
        ask(c, "c1", [{"role": "user", "content": "still here"}])  # c1 used again: c2 is oldest
        ask(c, "c4", [{"role": "user", "content": "c4"}])
        with pytest.raises(openai.NotFoundError):
            c.conversations.retrieve("c2")
        for name in ["c1", "c3", "c4"]:
            assert c.conversations.retrieve(name).id == name


def test_restart_with_sqlite_loses_nothing(upstream: Upstream, tmp_path: Path) -> None:
    settings = {"backend": "sqlite", "path": str(tmp_path / "restart.sqlite3")}
    with (
        run_palaver([provider_entry(upstream)], conversations=settings) as url,
        client_for(url) as c,
    ):
        ask(c, "durable", [{"role": "user", "content": "before restart"}])
    with (
        run_palaver([provider_entry(upstream)], conversations=settings) as url,
        client_for(url) as c,
    ):
        ask(c, "durable", [{"role": "user", "content": "after restart"}])
        items = list(c.conversations.items.list("durable"))
    assert sent_texts(upstream) == ["before restart", "[up1] before restart", "after restart"]
    assert len(items) == 4


async def test_twenty_concurrent_turns_lose_nothing(
    sqlite_palaver: str, upstream: Upstream
) -> None:
    async with openai.AsyncOpenAI(base_url=sqlite_palaver + "/v1", api_key="k", max_retries=0) as c:

        async def turn(n: int) -> None:
            messages: Any = [{"role": "user", "content": f"q{n}"}]
            extra = {"conversation": "busy"}
            if n % 2:
                await c.chat.completions.create(model="m", messages=messages, extra_body=extra)
                return
            stream = await c.chat.completions.create(
                model="m", messages=messages, extra_body=extra, stream=True
            )
            async for _ in stream:
                pass

        await asyncio.gather(*(turn(n) for n in range(20)))
        items = [item async for item in c.conversations.items.list("busy", limit=100)]
    stored = texts(items)
    assert len(stored) == 40
    for n in range(20):
        assert stored.index(f"[up1] q{n}") == stored.index(f"q{n}") + 1


@pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"])
def test_an_id_names_a_conversation_within_its_key(
    upstream: Upstream, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    """Two keys may use the same id; each sees only its own, and neither can learn whether
    the other uses an id."""
    sections: dict[str, Any] = {"server": {"api_keys": ["sk-alice", "sk-bob"]}}
    sections["conversations"] = {"backend": backend, "path": str(tmp_path / "c.sqlite3")}
    if backend == "redis":
        sections["redis"] = {
            "url": redis_url_or_skip(),
            "key_prefix": request.getfixturevalue("redis_prefix"),
        }
    with run_palaver([provider_entry(upstream)], **sections) as url:
        with client_for(url, "sk-alice") as alice:
            ask(alice, "trip-plan", [{"role": "user", "content": "my secret"}])
            mine = alice.conversations.create()
        with client_for(url, "sk-bob") as bob:
            for call in (  # alice's ids do not exist for bob: the same 404 as any unknown id
                lambda: bob.conversations.retrieve("trip-plan"),
                lambda: bob.conversations.items.list("trip-plan"),
                lambda: bob.conversations.retrieve(mine.id),
                lambda: bob.conversations.delete(mine.id),
                lambda: bob.conversations.update(mine.id, metadata={"x": "y"}),
                lambda: bob.conversations.items.create(
                    mine.id, items=[{"type": "message", "role": "user", "content": "x"}]
                ),
            ):
                with pytest.raises(openai.NotFoundError) as raised:
                    call()
                assert raised.value.status_code == 404
            listed = httpx.get(
                url + "/v1/conversations", headers={"authorization": "Bearer sk-bob"}
            )
            assert listed.json()["data"] == []
            reply = ask(bob, "trip-plan", [{"role": "user", "content": "bob's own"}])
            assert reply.model_extra == {"conversation": "trip-plan"}
            assert sent_texts(upstream) == ["bob's own"]  # nothing of alice's
            assert texts(bob.conversations.items.list("trip-plan")) == [
                "bob's own",
                "[up1] bob's own",
            ]
            bob.conversations.delete("trip-plan")
        with client_for(url, "sk-alice") as alice:
            assert texts(alice.conversations.items.list("trip-plan")) == [
                "my secret",
                "[up1] my secret",
            ]
            ask(alice, "trip-plan", [{"role": "user", "content": "still mine?"}])
    assert sent_texts(upstream) == ["my secret", "[up1] my secret", "still mine?"]


@pytest.mark.parametrize(
    "behaviour",
    [{"status": 500}, {"status": 400}, {"cut_after": 3}, {"hang": True}],
    ids=["5xx", "4xx", "cut-stream", "timeout"],
)
def test_failures_store_nothing(
    upstream: Upstream, tmp_path: Path, behaviour: dict[str, Any]
) -> None:
    settings = {"backend": "sqlite", "path": str(tmp_path / "f.sqlite3")}
    entry = provider_entry(upstream, first_byte_timeout=0.5)
    with run_palaver([entry], conversations=settings) as url, client_for(url) as c:
        ask(c, "steady", [{"role": "user", "content": "kept"}])
        upstream.behave(**behaviour)
        with pytest.raises(openai.APIError):  # a stream error event raises too
            list(
                c.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "lost"}],
                    stream=True,
                    extra_body={"conversation": "steady"},
                )
            )
        if "cut_after" not in behaviour:  # a cut only happens to streams
            with pytest.raises(openai.APIError):
                ask(c, "steady", [{"role": "user", "content": "lost too"}])
        upstream.behave()
        items = list(c.conversations.items.list("steady"))
    assert texts(items) == ["kept", "[up1] kept"]


def test_client_dropping_a_stream_stores_nothing(sqlite_palaver: str, upstream: Upstream) -> None:
    with client_for(sqlite_palaver) as c:
        ask(c, "dropped", [{"role": "user", "content": "kept"}])
        upstream.behave(chunk_delay=0.3)
        stream = c.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "abandoned halfway"}],
            stream=True,
            extra_body={"conversation": "dropped"},
        )
        next(iter(stream))
        stream.close()
        upstream.behave()
        import time

        time.sleep(0.5)
        items = list(c.conversations.items.list("dropped"))
    assert len(items) == 2


def test_failed_conversation_turn_on_unknown_model_creates_nothing(sqlite_palaver: str) -> None:
    with run_upstream("only") as only:
        entry = provider_entry(only, ["only-model"])
        with run_palaver([entry]) as url, client_for(url) as c:
            with pytest.raises(openai.NotFoundError):
                c.chat.completions.create(
                    model="other",
                    messages=[{"role": "user", "content": "x"}],
                    extra_body={"conversation": "ghost"},
                )
            with pytest.raises(openai.NotFoundError):
                c.conversations.retrieve("ghost")


def test_regenerating_client_sends_its_transcript_once(
    sqlite_palaver: str, upstream: Upstream
) -> None:
    transcript: list[Any] = [SYSTEM, {"role": "user", "content": "one"}]
    with client_for(sqlite_palaver) as client:
        reply = ask(client, "regen", transcript)
        transcript.append({"role": "assistant", "content": reply.choices[0].message.content})
        transcript.append({"role": "user", "content": "two"})
        ask(client, "regen", transcript)
        ask(client, "regen", transcript)  # "regenerate": the same transcript again
    assert sent_texts(upstream) == ["You are terse.", "one", "[up1] one", "two"]


def test_tool_loop_client_resending_its_transcript_is_not_doubled(
    sqlite_palaver: str, upstream: Upstream
) -> None:
    """A tool loop as the Vercel AI SDK, LangChain and pydantic-ai run it: each step sends the
    whole transcript back, tool-call arguments re-serialised from their parsed form."""
    tools: Any = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    question = {"role": "user", "content": "Weather in Paris?"}
    with client_for(sqlite_palaver) as client:
        first = ask(client, "loop", [SYSTEM, question], tools=tools)
        call = first.choices[0].message.tool_calls[0]
        compact = json.dumps(json.loads(call.function.arguments), separators=(",", ":"))
        assert compact != call.function.arguments  # the upstream spaced them
        transcript: list[Any] = [
            SYSTEM,
            question,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": compact},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ]
        ask(client, "loop", transcript)  # no tools: the upstream answers in words
        items = list(client.conversations.items.list("loop"))
    sent = upstream.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool"]
    assert [item.type for item in items] == [
        "message",
        "message",
        "function_call",
        "function_call_output",
        "message",
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_deleting_a_conversation_with_a_turn_in_flight_is_final(
    upstream: Upstream, tmp_path: Path, stream: bool
) -> None:
    conversations = {"backend": "sqlite", "path": str(tmp_path / "c.sqlite3")}
    with run_palaver([provider_entry(upstream)], conversations=conversations) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
            await c.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "first"}],
                extra_body={"conversation": "doomed"},
            )
            upstream.behave(first_byte_delay=0.5)

            async def turn() -> Any:
                if not stream:
                    return await c.chat.completions.create(
                        model="m",
                        messages=[{"role": "user", "content": "in flight"}],
                        extra_body={"conversation": "doomed"},
                    )
                chunks = await c.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "in flight"}],
                    extra_body={"conversation": "doomed"},
                    stream=True,
                )
                return [chunk async for chunk in chunks]

            in_flight = asyncio.create_task(turn())
            await asyncio.sleep(0.2)
            deleted = await c.conversations.delete("doomed")
            assert deleted.deleted
            if stream:
                with pytest.raises(openai.APIError, match="deleted while this request"):
                    await in_flight
            else:
                with pytest.raises(openai.NotFoundError, match="deleted while this request"):
                    await in_flight
            with pytest.raises(openai.NotFoundError):
                await c.conversations.retrieve("doomed")
            upstream.behave()
            await c.chat.completions.create(  # the id may be used again: a new conversation
                model="m",
                messages=[{"role": "user", "content": "reborn"}],
                extra_body={"conversation": "doomed"},
            )
            items = [item async for item in c.conversations.items.list("doomed")]
    assert texts(items) == ["reborn", "[up1] reborn"]
