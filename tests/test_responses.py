"""The Responses API through the official openai SDK, checked against OpenAI's spec schemas:
translation both ways, the stream's events, tools, the settings echoed, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.responses import FunctionToolParam, ResponseFormatTextJSONSchemaConfigParam
from openai.types.responses.response_input_item_param import ItemReference

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.openai_spec import check, check_event
from tests.upstream import Upstream

WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
    "strict": True,
}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1", answers_tool_results=True) as up:
        yield up


def raw_events(url: str, body: dict[str, Any], key: str = "sk-client") -> list[dict[str, Any]]:
    """The SSE events of a streamed response, as sent, each checked against its spec schema."""
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", url + "/v1/responses", json={**body, "stream": True}, headers=headers
    ) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        for block in reply.read().decode().split("\n\n"):
            if not block.strip():
                continue
            name, data = block.split("\n", 1)
            assert name.startswith("event: ")
            assert data.startswith("data: ")
            event = orjson.loads(data[6:])
            assert event["type"] == name[7:]
            check_event(event)
            events.append(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


# -- non-streaming -------------------------------------------------------------------------


def test_create_translates_both_ways(client: openai.OpenAI, upstream: Upstream) -> None:
    raw = client.responses.with_raw_response.create(
        model="m",
        input="Hello there",
        instructions="Answer briefly.",
        temperature=0.5,
        max_output_tokens=50,
        reasoning={"effort": "low"},
        metadata={"team": "docs"},
    )
    assert raw.headers["x-cache"] == "BYPASS"
    body = orjson.loads(raw.content)
    check("Response", body)
    response = raw.parse()
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "[up1] Hello there"
    assert response.instructions == "Answer briefly."
    assert response.metadata == {"team": "docs"}
    assert response.temperature == 0.5
    assert response.max_output_tokens == 50
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (5, 7)
    assert response.usage.total_tokens == 12
    sent = upstream.chat_requests[-1].body
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hello there"},
    ]
    assert sent["temperature"] == 0.5
    assert sent["max_completion_tokens"] == 50
    assert sent["reasoning_effort"] == "low"
    assert "metadata" not in sent
    assert "instructions" not in sent
    assert "input" not in sent


def test_input_items_become_messages(client: openai.OpenAI, upstream: Upstream) -> None:
    response = client.responses.create(
        model="m",
        input=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}]},
            {  # type: ignore[misc, list-item]  # detail is optional at OpenAI
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"},
                ],
            },
            {"role": "assistant", "content": "A picture."},
            {"type": "message", "role": "user", "content": "Describe it"},
        ],
    )
    check("Response", response.model_dump(mode="json", exclude_unset=True))
    sent = upstream.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["developer", "user", "user", "assistant", "user"]
    assert sent[2]["content"][0]["type"] == "image_url"
    assert sent[2]["content"][0]["image_url"]["url"] == "data:image/png;base64,AAAA"
    assert response.output_text == "[up1] Describe it"


def test_length_is_incomplete(client: openai.OpenAI) -> None:
    words = "one two three four five six seven eight nine ten " * 3
    response = client.responses.create(model="m", input=words, max_output_tokens=16)
    check("Response", response.model_dump(mode="json", exclude_unset=True))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


def test_text_format_becomes_response_format(client: openai.OpenAI, upstream: Upstream) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    fmt: ResponseFormatTextJSONSchemaConfigParam = {
        "type": "json_schema",
        "name": "reply",
        "schema": schema,
        "strict": True,
    }
    response = client.responses.create(model="m", input="hi", text={"format": fmt})
    sent = upstream.chat_requests[-1].body
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": schema, "strict": True},
    }
    assert response.text is not None
    assert response.text.format is not None
    assert response.text.format.type == "json_schema"
    client.responses.create(model="m", input="hi", text={"format": {"type": "json_object"}})
    assert upstream.chat_requests[-1].body["response_format"] == {"type": "json_object"}


# -- tools ---------------------------------------------------------------------------------


def test_function_tools_round_trip(client: openai.OpenAI, upstream: Upstream) -> None:
    first = client.responses.create(
        model="m", input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    check("Response", first.model_dump(mode="json", exclude_unset=True))
    sent = upstream.chat_requests[-1].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "required"
    [call] = first.output
    assert call.type == "function_call"
    assert call.name == "get_weather"
    assert call.arguments == '{"city": "Paris"}'
    assert call.call_id == "call_0"
    assert call.id is not None
    assert call.id.startswith("fc_")
    second = client.responses.create(
        model="m",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],
        tools=[WEATHER],
    )
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent[0] == {"role": "user", "content": "Weather in Paris?"}
    assert sent[1]["role"] == "assistant"
    assert sent[1]["tool_calls"][0]["id"] == "call_0"
    assert sent[2] == {"role": "tool", "tool_call_id": "call_0", "content": "Sunny"}
    assert second.output_text == "[up1] Weather in Paris?"
    named = client.responses.create(
        model="m",
        input="x",
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert upstream.chat_requests[-1].body["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert named.tool_choice.name == "get_weather"  # type: ignore[union-attr]


def test_streamed_tool_call_events(palaver_url: str, client: openai.OpenAI) -> None:
    events = raw_events(palaver_url, {"model": "m", "input": "Weather?", "tools": [WEATHER]})
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(d["delta"] for d in deltas) == '{"city": "Paris"}'
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == '{"city": "Paris"}'
    assert done["name"] == "get_weather"
    added = events[2]["item"]
    assert added["type"] == "function_call"
    assert added["status"] == "in_progress"
    assert {d["item_id"] for d in deltas} == {added["id"]} == {done["item_id"]}
    assert kinds[-1] == "response.completed"
    final = events[-1]["response"]
    check("Response", final)
    assert final["output"][0]["arguments"] == '{"city": "Paris"}'
    with client.responses.stream(model="m", input="Weather?", tools=[WEATHER]) as stream:
        response = stream.get_final_response()
    assert response.output[0].type == "function_call"
    assert response.output[0].arguments == '{"city": "Paris"}'


# -- streaming -----------------------------------------------------------------------------


def test_stream_events_as_openai_sends_them(palaver_url: str) -> None:
    events = raw_events(palaver_url, {"model": "m", "input": "Hello streaming world"})
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 4,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    item_id = events[2]["item"]["id"]
    for event in events[3:-2]:
        assert (event["item_id"], event["output_index"], event["content_index"]) == (
            item_id,
            0,
            0,
        )
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "[up1] Hello streaming world"
    assert events[-4]["text"] == text
    final = events[-1]["response"]
    assert final["id"] == events[0]["response"]["id"]
    assert final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["input_tokens"] == 5
    assert final["usage"]["output_tokens"] == 7


def test_sdk_stream_helper_assembles(client: openai.OpenAI) -> None:
    with client.responses.stream(model="m", input="Hi helper", instructions="Be kind.") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        response = s.get_final_response()
    assert "".join(deltas) == response.output_text == "[up1] Hi helper"
    assert response.status == "completed"
    assert response.instructions == "Be kind."
    stored = client.responses.retrieve(response.id)
    assert stored.output_text == response.output_text


def test_stream_cut_by_upstream_fails_and_stores_nothing(
    palaver_url: str, client: openai.OpenAI, upstream: Upstream
) -> None:
    conversation = client.conversations.create()
    upstream.behave(cut_after=3)
    events = raw_events(
        palaver_url,
        {"model": "m", "input": "one two three four", "conversation": conversation.id},
    )
    assert events[-1]["type"] == "response.failed"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(failed["id"])
    assert list(client.conversations.items.list(conversation.id)) == []
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="again", previous_response_id=failed["id"])
    assert caught.value.code == "previous_response_not_found"


# -- stored responses ----------------------------------------------------------------------


def test_retrieve_delete_and_input_items(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second"},
        ],
    )
    again = client.responses.retrieve(response.id)
    check("Response", again.model_dump(mode="json", exclude_unset=True))
    assert again.id == response.id
    assert again.output_text == response.output_text
    page = client.responses.input_items.with_raw_response.list(response.id)
    check("ResponseItemList", orjson.loads(page.content))
    items = list(client.responses.input_items.list(response.id))
    assert [i.content[0].text for i in items] == ["second", "ok", "first"]  # type: ignore[union-attr, index]
    ordered = list(client.responses.input_items.list(response.id, order="asc", limit=2))
    assert [i.content[0].text for i in ordered] == ["first", "ok", "second"]  # type: ignore[union-attr, index]
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model="m", input="secret", store=False)
    assert response.output_text == "[up1] secret"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_instructions_belong_to_one_response(client: openai.OpenAI, upstream: Upstream) -> None:
    first = client.responses.create(model="m", input="a", instructions="Speak French.")
    client.responses.create(model="m", input="b", previous_response_id=first.id)
    sent = upstream.chat_requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    client.responses.create(
        model="m", input="c", previous_response_id=first.id, instructions="Speak German."
    )
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent[0] == {"role": "system", "content": "Speak German."}


def test_previous_response_of_another_key_is_not_found(upstream: Upstream) -> None:
    server = {"api_keys": ["sk-alice", "sk-bob"]}
    with run_palaver([provider_entry(upstream)], server=server) as url:
        alice = openai.OpenAI(base_url=url + "/v1", api_key="sk-alice", max_retries=0)
        bob = openai.OpenAI(base_url=url + "/v1", api_key="sk-bob", max_retries=0)
        mine = alice.responses.create(model="m", input="private")
        with pytest.raises(openai.BadRequestError) as caught:
            bob.responses.create(model="m", input="peek", previous_response_id=mine.id)
        assert caught.value.code == "previous_response_not_found"
        assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as caught:
            bob.responses.create(model="m", input=[reference(mine.output[0].id)])
        assert caught.value.body["param"] == "input[0].id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            bob.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            bob.responses.delete(mine.id)
        assert alice.responses.retrieve(mine.id).output_text == "[up1] private"


def test_cache_serves_responses(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)], cache={"enabled": True}) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk", max_retries=0)
        first = client.responses.with_raw_response.create(model="m", input="cache me")
        second = client.responses.with_raw_response.create(model="m", input="cache me")
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert len(upstream.chat_requests) == 1
        assert first.parse().id != second.parse().id
        assert second.parse().output_text == "[up1] cache me"
        events = raw_events(url, {"model": "m", "input": "cache me"}, key="sk")
        assert len(upstream.chat_requests) == 1
        assert events[-1]["response"]["output"][0]["content"][0]["text"] == "[up1] cache me"


# -- bad input -----------------------------------------------------------------------------

BAD = [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["v"]}]}, "tools[0].type"),
    ({"background": True}, "background"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
        "input[0].content[0].type",
    ),
    ({"conversation": "c1", "previous_response_id": "resp_1"}, "previous_response_id"),
    ({"temperature": 3}, "temperature"),
    ({"max_output_tokens": 2}, "max_output_tokens"),
    ({"no_such_field": 1}, "no_such_field"),
    ({"text": {"fromat": {}}}, "text.fromat"),
    ({"input": 5}, "input"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
]


@pytest.mark.parametrize(("extra", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_input_names_the_parameter(
    client: openai.OpenAI, upstream: Upstream, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "input": "hi", **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/responses", body=body, cast_to=httpx.Response)
    error = caught.value.body
    check("Error", error)
    assert error["param"] == param, error  # type: ignore[index]
    assert upstream.chat_requests == []


def test_unknown_previous_response(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="m", input="x", previous_response_id="resp_nope")
    assert caught.value.code == "previous_response_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        client.responses.input_items.list("resp_nope")
    assert missing.value.code == "response_not_found"


def reference(item_id: str | None) -> ItemReference:
    assert item_id is not None
    return {"type": "item_reference", "id": item_id}


def test_item_references_name_stored_items(client: openai.OpenAI, upstream: Upstream) -> None:
    """An ``item_reference`` (the Vercel AI SDK sends them for earlier answers) stands for
    the stored item it names: an output message or call of a response of the same key."""
    first = client.responses.create(
        model="m", input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )
    [call] = first.output
    assert call.type == "function_call"
    second = client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            reference(call.id),
            {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"},
        ],
        tools=[WEATHER],
    )
    [message] = second.output
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[1]["tool_calls"][0]["function"]["name"] == "get_weather"
    client.responses.create(
        model="m",
        input=[
            {"role": "user", "content": "one"},
            reference(message.id),
            {"role": "user", "content": "two"},
        ],
    )
    sent = upstream.chat_requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "[up1] Weather in Paris?"},
        {"role": "user", "content": "two"},
    ]
    calls = len(upstream.chat_requests)
    for bad_id in ("msg_" + "0" * 48, "nonsense", "bad id!"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="m", input=[{"type": "item_reference", "id": bad_id}])
        check("Error", caught.value.body)
        assert caught.value.body["param"] == "input[0].id"  # type: ignore[index]
    assert len(upstream.chat_requests) == calls
