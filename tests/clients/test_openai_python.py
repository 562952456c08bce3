"""The official ``openai`` Python SDK against palaver, as an application uses it: on Chat
Completions and on the Responses API each, a plain call, a stream, three turns whose history
palaver keeps, and a tool-call round trip. What the upstream received and what palaver stored
are compared in the suite's one flattened form (tests/clients/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam
from openai.types.responses import FunctionToolParam, Response, ResponseInputParam

from tests.clients.conftest import API_KEY, SYSTEM, Gateway, tool_turns

DIALOGUE = ["user: one", "assistant: [up] one", "user: two", "assistant: [up] two", "user: three"]
PARAMETERS: dict[str, object] = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
}
CHAT_WEATHER: ChatCompletionToolParam = {
    "type": "function",
    "function": {"name": "weather", "description": "The weather", "parameters": PARAMETERS},
}
WEATHER: FunctionToolParam = {
    "type": "function",
    "name": "weather",
    "description": "The weather",
    "parameters": PARAMETERS,
    "strict": False,
}


@pytest.fixture
def sdk(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY, max_retries=0) as client:
        yield client


# -- Chat Completions ----------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_chat_plain(gateway: Gateway, sdk: openai.OpenAI, streaming: bool) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    if streaming:
        chunks = list(sdk.chat.completions.create(model="chat", messages=messages, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert len(chunks) > 2
    else:
        text = (
            sdk.chat.completions.create(model="chat", messages=messages).choices[0].message.content
            or ""
        )
    assert text == "[up] hello"
    assert gateway.last_sent("chat") == ["user: hello"]


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_chat_three_turns_kept_by_palaver(
    gateway: Gateway, sdk: openai.OpenAI, streaming: bool
) -> None:
    """palaver's chat extension: only the new message each turn, the conversation named."""
    for question in ("one", "two", "three"):
        messages: list[ChatCompletionMessageParam] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ]
        extra = {"conversation": "py-chat"}
        if streaming:
            stream = sdk.chat.completions.create(
                model="chat-turns", messages=messages, stream=True, extra_body=extra
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            reply = sdk.chat.completions.create(
                model="chat-turns", messages=messages, extra_body=extra
            )
            text = reply.choices[0].message.content or ""
        assert text == f"[up] {question}"
    expected = [f"system: {SYSTEM}", *DIALOGUE]
    assert gateway.last_sent("chat-turns") == expected
    assert gateway.items("py-chat") == [*expected, "assistant: [up] three"]


def test_chat_tool_round_trip(gateway: Gateway, sdk: openai.OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather in Paris?"},
    ]
    extra = {"conversation": "py-chat-tools"}
    first = sdk.chat.completions.create(
        model="chat-tools", messages=messages, tools=[CHAT_WEATHER], extra_body=extra
    ).choices[0]
    assert first.finish_reason == "tool_calls"
    [call] = first.message.tool_calls or []
    assert call.type == "function"
    assert (call.function.name, call.id) == ("weather", "call_0")
    messages = [{"role": "tool", "tool_call_id": call.id, "content": "sunny in Paris"}]
    second = sdk.chat.completions.create(
        model="chat-tools", messages=messages, tools=[CHAT_WEATHER], extra_body=extra
    )
    assert second.choices[0].message.content == "[up] Weather in Paris?"
    expected = tool_turns()[:5]
    assert gateway.last_sent("chat-tools") == expected[:-1]
    assert gateway.items("py-chat-tools") == expected


# -- Responses -----------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", ["create", "events", "helper"])
def test_responses_plain(gateway: Gateway, sdk: openai.OpenAI, streaming: str) -> None:
    response: Response
    if streaming == "create":
        response = sdk.responses.create(model="resp", input="hello")
    elif streaming == "events":
        events = list(sdk.responses.create(model="resp", input="hello", stream=True))
        assert events[0].type == "response.created"
        assert events[-1].type == "response.completed"
        assert any(e.type == "response.output_text.delta" for e in events)
        last = events[-1]
        assert last.type == "response.completed"
        response = last.response
    else:
        with sdk.responses.stream(model="resp", input="hello") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            response = stream.get_final_response()
        assert "".join(deltas) == "[up] hello"
    assert (response.status, response.output_text) == ("completed", "[up] hello")
    assert sdk.responses.retrieve(response.id).output_text == "[up] hello"
    assert gateway.last_sent("resp") == ["user: hello"]


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_responses_chain_of_three(gateway: Gateway, sdk: openai.OpenAI, streaming: bool) -> None:
    previous: str | None = None
    response: Response
    for question in ("one", "two", "three"):
        if streaming:
            with sdk.responses.stream(
                model="chain", input=question, previous_response_id=previous
            ) as stream:
                response = stream.get_final_response()
        else:
            response = sdk.responses.create(
                model="chain", input=question, previous_response_id=previous
            )
        assert response.output_text == f"[up] {question}"
        assert response.previous_response_id == previous
        previous = response.id
    assert [len(b["messages"]) for b in gateway.bodies("chain")] == [1, 3, 5]
    assert gateway.last_sent("chain") == DIALOGUE


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_responses_conversation_of_three(
    gateway: Gateway, sdk: openai.OpenAI, streaming: bool
) -> None:
    conversation = sdk.conversations.create()
    response: Response
    for question in ("one", "two", "three"):
        if streaming:
            with sdk.responses.stream(
                model="conv", input=question, conversation=conversation.id
            ) as stream:
                response = stream.get_final_response()
        else:
            response = sdk.responses.create(
                model="conv", input=question, conversation=conversation.id
            )
        assert response.output_text == f"[up] {question}"
    assert gateway.last_sent("conv") == DIALOGUE
    assert gateway.items(conversation.id) == [*DIALOGUE, "assistant: [up] three"]


@pytest.mark.parametrize("streaming", [False, True], ids=["create", "stream"])
def test_responses_tool_round_trip(gateway: Gateway, sdk: openai.OpenAI, streaming: bool) -> None:
    def create(text: str | ResponseInputParam, previous: str | None = None) -> Response:
        if not streaming:
            return sdk.responses.create(
                model="resp-tools",
                input=text,
                tools=[WEATHER],
                instructions=SYSTEM,
                previous_response_id=previous,
            )
        with sdk.responses.stream(
            model="resp-tools",
            input=text,
            tools=[WEATHER],
            instructions=SYSTEM,
            previous_response_id=previous,
        ) as stream:
            return stream.get_final_response()

    first = create("Weather in Paris?")
    [call] = first.output
    assert call.type == "function_call"
    assert (call.name, call.call_id, call.arguments) == ("weather", "call_0", '{"city": "Paris"}')
    results: ResponseInputParam = [
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny in Paris"}
    ]
    second = create(results, first.id)
    assert second.output_text == "[up] Weather in Paris?"
    assert gateway.last_sent("resp-tools") == tool_turns()[:4]
