"""Responses state through the openai SDK: chains by ``previous_response_id`` (the model sees
the whole chain), ``conversation`` shared with chat requests and the Conversations API, and
stored responses on every backend: sqlite across a restart, Redis across two processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import openai
import pytest
from openai.types.responses import EasyInputMessageParam, ResponseInputParam

from tests.conftest import provider_entry, redis_url_or_skip, run_palaver, run_upstream
from tests.test_cli import palaver_process
from tests.test_redis import _config
from tests.test_responses import WEATHER
from tests.upstream import Upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1", answers_tool_results=True) as up:
        yield up


def sdk(url: str, key: str = "sk") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def sent_dialogue(upstream: Upstream) -> list[tuple[str, Any]]:
    """The last request's messages as (role, content or the tool-call ids)."""
    out: list[tuple[str, Any]] = []
    for message in upstream.chat_requests[-1].body["messages"]:
        calls = message.get("tool_calls")
        out.append((message["role"], [c["id"] for c in calls] if calls else message["content"]))
    return out


def test_chain_of_four_with_a_function_call(client: openai.OpenAI, upstream: Upstream) -> None:
    one = client.responses.create(model="m", input="Plan a day in Paris", instructions="Be brief.")
    assert sent_dialogue(upstream) == [("system", "Be brief."), ("user", "Plan a day in Paris")]
    two = client.responses.create(
        model="m", input="Check the weather", previous_response_id=one.id, tools=[WEATHER]
    )
    [call] = two.output
    assert call.type == "function_call"
    assert sent_dialogue(upstream) == [
        ("user", "Plan a day in Paris"),
        ("assistant", "[up1] Plan a day in Paris"),
        ("user", "Check the weather"),
    ]
    with client.responses.stream(
        model="m",
        previous_response_id=two.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24C"}],
        tools=[WEATHER],
    ) as stream:
        three = stream.get_final_response()
    assert three.output_text == "[up1] Check the weather"
    assert sent_dialogue(upstream)[2:] == [
        ("user", "Check the weather"),
        ("assistant", ["call_0"]),
        ("tool", "Sunny, 24C"),
    ]
    four = client.responses.create(model="m", input="Thanks!", previous_response_id=three.id)
    assert four.previous_response_id == three.id
    assert sent_dialogue(upstream) == [
        ("user", "Plan a day in Paris"),
        ("assistant", "[up1] Plan a day in Paris"),
        ("user", "Check the weather"),
        ("assistant", ["call_0"]),
        ("tool", "Sunny, 24C"),
        ("assistant", "[up1] Check the weather"),
        ("user", "Thanks!"),
    ]
    # Each response's input items are its own input, newest first.
    items = list(client.responses.input_items.list(three.id))
    assert [i.type for i in items] == ["function_call_output"]
    # A branch: continuing an earlier response forks the chain, the later ones unchanged.
    client.responses.create(model="m", input="Or Rome?", previous_response_id=one.id)
    assert sent_dialogue(upstream)[-1] == ("user", "Or Rome?")
    assert len(sent_dialogue(upstream)) == 3


def test_chain_is_trimmed_by_priority(upstream: Upstream) -> None:
    conversations = {"backend": "memory", "max_messages": 4}
    with run_palaver([provider_entry(upstream)], conversations=conversations) as url:
        client = sdk(url)
        previous = client.responses.create(
            model="m",
            input=[{"role": "system", "content": "Rules."}, {"role": "user", "content": "u0"}],
        )
        for n in range(1, 5):
            previous = client.responses.create(
                model="m", input=f"u{n}", previous_response_id=previous.id
            )
        sent = sent_dialogue(upstream)
        assert len(sent) == 4
        assert sent[0] == ("system", "Rules.")  # instructions outlive the dialogue
        assert sent[-1] == ("user", "u4")


def test_conversation_shared_with_chat_and_items(client: openai.OpenAI, upstream: Upstream) -> None:
    conversation = client.conversations.create(metadata={"topic": "trip"})
    first = client.responses.create(model="m", input="Where to?", conversation=conversation.id)
    assert first.conversation is not None
    assert first.conversation.id == conversation.id
    with client.responses.stream(
        model="m", input="And when?", conversation={"id": conversation.id}
    ) as stream:
        second = stream.get_final_response()
    assert second.output_text == "[up1] And when?"
    assert sent_dialogue(upstream) == [
        ("user", "Where to?"),
        ("assistant", "[up1] Where to?"),
        ("user", "And when?"),
    ]
    client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "By chat now"}],
        extra_body={"conversation": conversation.id},
    )
    assert len(sent_dialogue(upstream)) == 5
    third = client.responses.create(
        model="m", input="Back to responses", conversation=conversation.id
    )
    assert third.output_text == "[up1] Back to responses"
    assert len(sent_dialogue(upstream)) == 7
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    texts = [item.content[0].text for item in items]  # type: ignore[union-attr, index]
    assert texts == [
        "Where to?",
        "[up1] Where to?",
        "And when?",
        "[up1] And when?",
        "By chat now",
        "[up1] By chat now",
        "Back to responses",
        "[up1] Back to responses",
    ]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="x", conversation="conv_missing")


def test_conversation_merges_like_chat(client: openai.OpenAI, upstream: Upstream) -> None:
    """Responses on a conversation follow chat's merge (CONTRACT §5): a system message sent
    with every turn, or the whole transcript resent, is sent and stored once."""
    conversation = client.conversations.create()
    system: EasyInputMessageParam = {"role": "system", "content": "Be terse."}
    transcript: ResponseInputParam = [system]
    for question in ("one", "two"):
        client.responses.create(
            model="m",
            input=[system, {"role": "user", "content": question}],
            conversation=conversation.id,
        )
    for text in ("one", "[up1] one", "two", "[up1] two"):
        role: Literal["user", "assistant"] = "assistant" if text.startswith("[") else "user"
        transcript.append({"role": role, "content": text})
    transcript.append({"role": "user", "content": "three"})
    client.responses.create(model="m", input=transcript, conversation=conversation.id)
    expected = [
        ("system", "Be terse."),
        ("user", "one"),
        ("assistant", "[up1] one"),
        ("user", "two"),
        ("assistant", "[up1] two"),
        ("user", "three"),
    ]
    assert sent_dialogue(upstream) == expected
    items = list(client.conversations.items.list(conversation.id, order="asc"))
    stored = [(i.role, i.content[0].text) for i in items]  # type: ignore[union-attr, index]
    assert stored == [*expected, ("assistant", "[up1] three")]


def test_sqlite_chain_survives_a_restart(upstream: Upstream, tmp_path: Path) -> None:
    conversations = {"backend": "sqlite", "path": str(tmp_path / "state.sqlite3")}
    with run_palaver([provider_entry(upstream)], conversations=conversations) as url:
        first = sdk(url).responses.create(model="m", input="Remember me")
    with run_palaver([provider_entry(upstream)], conversations=conversations) as url:
        client = sdk(url)
        assert client.responses.retrieve(first.id).output_text == "[up1] Remember me"
        client.responses.create(model="m", input="Still there?", previous_response_id=first.id)
        assert sent_dialogue(upstream) == [
            ("user", "Remember me"),
            ("assistant", "[up1] Remember me"),
            ("user", "Still there?"),
        ]


def test_expired_responses_are_gone(upstream: Upstream, tmp_path: Path) -> None:
    conversations = {"backend": "sqlite", "path": str(tmp_path / "ttl.sqlite3")}
    settings: dict[str, Any] = {"conversations": conversations, "responses": {"ttl_seconds": 0.3}}
    with run_palaver([provider_entry(upstream)], **settings) as url:
        client = sdk(url)
        response = client.responses.create(model="m", input="short-lived")
        assert client.responses.retrieve(response.id).id == response.id
        import time

        time.sleep(0.5)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)


def test_redis_chain_across_two_processes(
    upstream: Upstream, redis_prefix: str, tmp_path: Path
) -> None:
    config = _config(tmp_path, upstream, redis_prefix, redis_url_or_skip())
    with (
        palaver_process("--config", str(config), env={}, cwd=tmp_path) as one,
        palaver_process("--config", str(config), env={}, cwd=tmp_path) as two,
    ):
        a, b = sdk(one), sdk(two)
        first = a.responses.create(model="m", input="Begun on one")
        with b.responses.stream(
            model="m", input="Continued on two", previous_response_id=first.id
        ) as stream:
            second = stream.get_final_response()
        assert sent_dialogue(upstream) == [
            ("user", "Begun on one"),
            ("assistant", "[up1] Begun on one"),
            ("user", "Continued on two"),
        ]
        assert a.responses.retrieve(second.id).output_text == "[up1] Continued on two"
        b.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            a.responses.retrieve(first.id)
        conversation = a.conversations.create()
        a.responses.create(model="m", input="conv one", conversation=conversation.id)
        b.responses.create(model="m", input="conv two", conversation=conversation.id)
        assert len(list(a.conversations.items.list(conversation.id))) == 4
