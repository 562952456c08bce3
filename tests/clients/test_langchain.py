"""LangChain (``langchain-openai`` ``ChatOpenAI``) against palaver, on Chat Completions and,
with ``use_responses_api=True``, on the Responses API (chained by ``previous_response_id``).

A LangChain application holds the transcript as a list of messages and sends all of it on
every call: after a tool call it appends the AIMessage and a ToolMessage per call and invokes
again. ``ChatOpenAI`` writes tool-call arguments back with ``json.dumps`` (spaced), so a model
that writes them compactly (as OpenAI's do) gets them back re-spelt (CONTRACT §5).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool, tool
from langchain_openai import ChatOpenAI

from tests.clients.conftest import API_KEY, CLOCK, SPELLINGS, SYSTEM, Gateway, tool_turns


@tool
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@tool
def clock() -> str:
    """The time now."""
    return "noon"


@contextmanager
def chat(gateway: Gateway, model: str, conversation: str | None = None) -> Iterator[ChatOpenAI]:
    headers = {"X-Conversation-Id": conversation} if conversation else None
    # A client of its own: LangChain's default one is shared (cached by base URL and timeout),
    # so closing it would break a later test whose gateway got the same port.
    http_client = httpx.Client(timeout=20)
    llm = ChatOpenAI(
        base_url=gateway.base_url,
        api_key=API_KEY,  # type: ignore[arg-type]  # a SecretStr at heart; str is accepted
        model=model,
        default_headers=headers,
        max_retries=0,
        timeout=20,
        http_client=http_client,
    )
    try:
        yield llm
    finally:
        http_client.close()  # its keep-alive connections would hold palaver's shutdown


def call(llm: Any, messages: list[BaseMessage], streaming: bool) -> AIMessage:
    """One model call, as ``invoke`` or as ``stream`` with the chunks added up."""
    if not streaming:
        reply = llm.invoke(messages)
        assert isinstance(reply, AIMessage)
        return reply
    total: Any = None
    for chunk in llm.stream(messages):
        total = chunk if total is None else total + chunk
    assert isinstance(total, AIMessage)
    return total


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_plain_chat(gateway: Gateway, streaming: bool) -> None:
    with chat(gateway, "plain") as llm:
        reply = call(llm, [HumanMessage("hello")], streaming)
    assert reply.content == "[up] hello"
    [body] = gateway.bodies("plain")
    assert bool(body.get("stream")) is streaming
    assert gateway.last_sent("plain") == ["user: hello"]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_whole_transcript_is_sent_and_stored_once(gateway: Gateway, streaming: bool) -> None:
    messages: list[BaseMessage] = [SystemMessage(SYSTEM)]
    with chat(gateway, "transcript", "lc-transcript") as llm:
        for question in ["one", "two"]:
            messages.append(HumanMessage(question))
            messages.append(call(llm, messages, streaming))
    expected = [f"system: {SYSTEM}", "user: one", "assistant: [up] one", "user: two"]
    assert gateway.last_sent("transcript") == expected
    assert gateway.items("lc-transcript") == [*expected, "assistant: [up] two"]


def tool_loop(
    gateway: Gateway, model: str, tool: BaseTool, questions: tuple[str, str], streaming: bool
) -> list[BaseMessage]:
    """An agent loop as LangChain apps write it: the whole transcript on every call, the
    AIMessage and a ToolMessage per call appended until the model answers in words."""
    messages: list[BaseMessage] = [SystemMessage(SYSTEM)]
    with chat(gateway, model, f"lc-{model}") as llm:
        bound = llm.bind_tools([tool])
        for question in questions:
            messages.append(HumanMessage(question))
            for _ in range(4):
                reply = call(bound, messages, streaming)
                messages.append(reply)
                if not reply.tool_calls:
                    break
                for tool_call in reply.tool_calls:
                    result = tool.invoke(tool_call["args"])
                    messages.append(ToolMessage(result, tool_call_id=tool_call["id"]))
    return messages


def answers(messages: list[BaseMessage]) -> list[Any]:
    return [m.content for m in messages if isinstance(m, AIMessage) and m.content]


@pytest.mark.parametrize("gateway", SPELLINGS, indirect=True)
@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_tool_loop_sends_and_stores_each_message_once(gateway: Gateway, streaming: bool) -> None:
    questions = ("Weather in Paris?", "And tomorrow?")
    messages = tool_loop(gateway, "tools", weather, questions, streaming)
    assert answers(messages) == ["[up] Weather in Paris?", "[up] And tomorrow?"]
    assert len(gateway.bodies("tools")) == 4
    expected = tool_turns(questions)
    assert gateway.last_sent("tools") == expected[:-1]
    assert gateway.items("lc-tools") == expected


@pytest.mark.parametrize("gateway", ["empty"], indirect=True)
def test_tool_without_parameters_called_with_empty_arguments(gateway: Gateway) -> None:
    questions = ("What time is it?", "And now?")
    messages = tool_loop(gateway, "clock", clock, questions, streaming=False)
    assert answers(messages) == ["[up] What time is it?", "[up] And now?"]
    expected = tool_turns(questions, CLOCK)
    assert gateway.last_sent("clock") == expected[:-1]
    assert gateway.items("lc-clock") == expected


# -- use_responses_api=True: the Responses API (CONTRACT §9) ---------------------------------


@contextmanager
def responses(gateway: Gateway, model: str, chained: bool = False) -> Iterator[ChatOpenAI]:
    """ChatOpenAI on /v1/responses; ``chained``: it sends only the messages after its last
    answer, with that answer's ``previous_response_id`` (palaver keeps the chain)."""
    llm = ChatOpenAI(
        base_url=gateway.base_url,
        api_key=API_KEY,  # type: ignore[arg-type]
        model=model,
        use_responses_api=True,
        use_previous_response_id=chained,
        max_retries=0,
        timeout=20,
    )
    try:
        yield llm
    finally:
        llm.root_client.close()


def text_of(message: AIMessage) -> str:
    """The text of an answer (the Responses API gives content blocks)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(block.get("text", "") for block in message.content if isinstance(block, dict))


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_responses_plain(gateway: Gateway, streaming: bool) -> None:
    with responses(gateway, "resp-plain") as llm:
        reply = call(llm, [HumanMessage("hello")], streaming)
    assert text_of(reply) == "[up] hello"
    assert reply.response_metadata.get("id", "").startswith("resp_")
    assert gateway.last_sent("resp-plain") == ["user: hello"]
    assert [r.path for r in gateway.upstream.requests] == ["/v1/chat/completions"]


@pytest.mark.parametrize("streaming", [False, True], ids=["invoke", "stream"])
def test_responses_three_turns_by_previous_response_id(gateway: Gateway, streaming: bool) -> None:
    messages: list[BaseMessage] = [SystemMessage(SYSTEM)]
    with responses(gateway, "resp-chain", chained=True) as llm:
        for question in ["one", "two", "three"]:
            messages.append(HumanMessage(question))
            reply = call(llm, messages, streaming)
            assert text_of(reply) == f"[up] {question}"
            messages.append(reply)
    with openai.OpenAI(base_url=gateway.base_url, api_key=API_KEY) as client:
        sent = list(client.responses.input_items.list(reply.response_metadata["id"]))
    assert len(sent) == 1  # only "three" came in: the chain held the rest
    bodies = gateway.bodies("resp-chain")
    assert [len(body["messages"]) for body in bodies] == [2, 4, 6]
    assert gateway.last_sent("resp-chain") == [
        f"system: {SYSTEM}",
        "user: one",
        "assistant: [up] one",
        "user: two",
        "assistant: [up] two",
        "user: three",
    ]


@pytest.mark.parametrize("gateway", SPELLINGS, indirect=True)
@pytest.mark.parametrize("chained", [False, True], ids=["transcript", "chained"])
def test_responses_tool_loop(gateway: Gateway, chained: bool) -> None:
    """The agent loop on the Responses API: the whole transcript each call, or (chained)
    only what follows the last answer."""
    questions = ("Weather in Paris?", "And tomorrow?")
    messages: list[BaseMessage] = [SystemMessage(SYSTEM)]
    with responses(gateway, "resp-tools", chained) as llm:
        bound = llm.bind_tools([weather])
        for question in questions:
            messages.append(HumanMessage(question))
            for _ in range(4):
                reply = call(bound, messages, streaming=False)
                messages.append(reply)
                if not reply.tool_calls:
                    break
                for tool_call in reply.tool_calls:
                    result = weather.invoke(tool_call["args"])
                    messages.append(ToolMessage(result, tool_call_id=tool_call["id"]))
    texts = [text_of(m) for m in messages if isinstance(m, AIMessage) and text_of(m)]
    assert texts == ["[up] Weather in Paris?", "[up] And tomorrow?"]
    assert len(gateway.bodies("resp-tools")) == 4
    assert gateway.last_sent("resp-tools") == tool_turns(questions)[:-1]
