"""Instruction priority within a model's context window, through the openai SDK (chat and
Responses) against the test upstream: long dialogues keep their system prompt and recent turns
while the upstream never receives more than the window; what cannot fit is refused with 400
``context_length_exceeded`` before any provider is called."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from palaver.tokens import Counter, get_encoding
from tests.conftest import provider_entry, redis_url_or_skip, run_palaver, run_upstream
from tests.upstream import Upstream

WINDOW = 700
RESERVE = 200
SYSTEM = "You are a pirate. Always answer like a pirate."
COUNTER = Counter(get_encoding("o200k_base"))


def prompt_tokens(body: dict[str, Any]) -> int:
    return COUNTER.messages(body["messages"]) + COUNTER.tools(body.get("tools"))


def reply_room(body: dict[str, Any]) -> int:
    return int(body.get("max_completion_tokens") or body.get("max_tokens") or RESERVE)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


def start(upstream: Upstream, tmp_path: Path, backend: str = "sqlite", **extra: Any) -> Any:
    conversations: dict[str, Any] = {"backend": backend, "reply_reserve": RESERVE}
    if backend == "sqlite":
        conversations["path"] = str(tmp_path / "palaver.sqlite3")
    return run_palaver(
        [provider_entry(upstream)],
        conversations=conversations,
        models={"small": {"context_window": WINDOW}},
        **extra,
    )


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0)


def question(turn: int) -> str:
    return f"Question {turn}: what do you think about the sea and the ships on it today?"


def hold_dialogue(client: openai.OpenAI, upstream: Upstream, turns: int) -> list[int]:
    """``turns`` chat turns on one conversation; the X-Palaver-Trimmed of each (0: none)."""
    trimmed: list[int] = []
    for turn in range(turns):
        messages: list[Any] = [{"role": "user", "content": question(turn)}]
        if turn == 0:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        raw = client.chat.completions.with_raw_response.create(
            model="small", messages=messages, extra_headers={"X-Conversation-Id": "voyage"}
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == f"[up1] {question(turn)}"
        trimmed.append(int(raw.headers.get("x-palaver-trimmed", "0")))
        body = upstream.chat_requests[-1].body
        # the header counts the stored messages left out: all stored but those sent
        stored_before = 0 if turn == 0 else min(1 + 2 * turn, 50)
        assert trimmed[-1] == stored_before - (len(body["messages"]) - len(messages))
        assert prompt_tokens(body) + reply_room(body) <= WINDOW
        assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        assert body["messages"][-1]["content"] == question(turn)
    return trimmed


@pytest.mark.parametrize("backend", ["sqlite", "memory", "redis"])
def test_a_long_dialogue_keeps_its_system_prompt_within_the_window(
    upstream: Upstream, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    extra: dict[str, Any] = {}
    if backend == "redis":
        url = redis_url_or_skip()
        extra["redis"] = {"url": url, "key_prefix": request.getfixturevalue("redis_prefix")}
    with start(upstream, tmp_path, backend, **extra) as url, sdk(url) as client:
        trimmed = hold_dialogue(client, upstream, 30)
        assert trimmed[:3] == [0, 0, 0]  # short at first: nothing left out
        assert trimmed[-1] > 0
        # the newest turns are sent: the last question before this one is there
        sent = [m["content"] for m in upstream.chat_requests[-1].body["messages"]]
        assert question(28) in sent
        # nothing was lost from the store: it still holds the whole dialogue
        items = client.conversations.items.list("voyage", limit=100)
        assert len(items.data) == min(1 + 2 * 30, 50)


def test_stored_messages_keep_their_counts(upstream: Upstream, tmp_path: Path) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        hold_dialogue(client, upstream, 3)
    db = sqlite3.connect(tmp_path / "palaver.sqlite3")
    rows = db.execute("SELECT body, tokens FROM messages ORDER BY seq").fetchall()
    db.close()
    import orjson

    assert len(rows) == 7
    for body, tokens in rows:
        assert orjson.loads(tokens) == {"o200k_base": COUNTER.message(orjson.loads(body))}


def test_an_oversized_message_is_refused_before_any_provider(
    upstream: Upstream, tmp_path: Path
) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        hold_dialogue(client, upstream, 2)
        seen = len(upstream.chat_requests)
        huge = "Tell me everything about the ocean. " * 200
        named: Any = {"extra_headers": {"X-Conversation-Id": "voyage"}}
        anonymous: Any = {}
        for extra in (named, anonymous):
            with pytest.raises(openai.BadRequestError) as raised:
                client.chat.completions.create(
                    model="small", messages=[{"role": "user", "content": huge}], **extra
                )
            error = raised.value.body
            assert isinstance(error, dict)
            assert error["code"] == "context_length_exceeded"
            assert error["param"] == "messages"
            assert f"maximum context length is {WINDOW} tokens" in error["message"]
        # max_tokens takes the reply's room: a request that fits with the reserve may not
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(
                model="small",
                messages=[{"role": "user", "content": question(0)}],
                max_tokens=WINDOW,
            )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.stream(
                model="small", messages=[{"role": "user", "content": huge}]
            ).__enter__()
        assert len(upstream.chat_requests) == seen  # the upstream saw none of them
        items = client.conversations.items.list("voyage", limit=100)
        assert len(items.data) == 5  # nothing of the refused turn was stored


def test_an_unknown_model_is_not_trimmed_by_tokens(upstream: Upstream, tmp_path: Path) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        huge = "Tell me everything about the ocean. " * 200
        answer = client.chat.completions.create(
            model="unknown-model", messages=[{"role": "user", "content": huge}]
        )
        assert answer.choices[0].message.content == f"[up1] {huge}"


def test_streamed_turns_trim_too(upstream: Upstream, tmp_path: Path) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        hold_dialogue(client, upstream, 12)
        with client.chat.completions.with_streaming_response.create(
            model="small",
            messages=[{"role": "user", "content": question(12)}],
            stream=True,
            extra_headers={"X-Conversation-Id": "voyage"},
        ) as response:
            assert int(response.headers["x-palaver-trimmed"]) > 0
            text = "".join(
                chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
            )
        assert text == f"[up1] {question(12)}"
        body = upstream.chat_requests[-1].body
        assert prompt_tokens(body) + reply_room(body) <= WINDOW
        assert body["messages"][0]["content"] == SYSTEM


def test_responses_truncation_auto_trims_and_disabled_refuses(
    upstream: Upstream, tmp_path: Path
) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        previous: str | None = None
        trimmed: list[int] = []
        for turn in range(20):
            raw = client.responses.with_raw_response.create(
                model="small",
                input=question(turn),
                instructions=SYSTEM,
                previous_response_id=previous,
                truncation="auto",
            )
            response = raw.parse()
            assert response.status == "completed"
            assert response.truncation == "auto"
            previous = response.id
            trimmed.append(int(raw.headers.get("x-palaver-trimmed", "0")))
            body = upstream.chat_requests[-1].body
            assert prompt_tokens(body) + reply_room(body) <= WINDOW
            assert body["messages"][0] == {"role": "system", "content": SYSTEM}
        assert trimmed[0] == 0
        assert trimmed[-1] > 0
        seen = len(upstream.chat_requests)
        # the default, "disabled", as at OpenAI: a chain that does not fit is a 400
        with pytest.raises(openai.BadRequestError) as raised:
            client.responses.create(model="small", input="And now?", previous_response_id=previous)
        error = raised.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == ("context_length_exceeded", "input")
        # an input that alone does not fit is a 400 with "auto" too
        with pytest.raises(openai.BadRequestError):
            client.responses.create(
                model="small", input="Tell me about the ocean. " * 300, truncation="auto"
            )
        assert len(upstream.chat_requests) == seen


def test_responses_on_a_conversation_trim_like_chat(upstream: Upstream, tmp_path: Path) -> None:
    with start(upstream, tmp_path) as url, sdk(url) as client:
        hold_dialogue(client, upstream, 15)
        raw = client.responses.with_raw_response.create(
            model="small", input=question(15), conversation="voyage", truncation="auto"
        )
        assert raw.parse().status == "completed"
        assert int(raw.headers["x-palaver-trimmed"]) > 0
        body = upstream.chat_requests[-1].body
        assert body["messages"][0]["content"] == SYSTEM
        assert prompt_tokens(body) + reply_room(body) <= WINDOW
