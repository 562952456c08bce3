"""pydantic-ai (``OpenAIChatModel`` over an ``OpenAIProvider``) against palaver; and
``OpenAIResponsesModel`` on the Responses API, its chain kept by palaver
(``openai_previous_response_id='auto'``).

An agent run sends its whole message list on every step of its tool loop, and a second run
given ``message_history=result.all_messages()`` resends the first run's transcript; tool-call
arguments go back as pydantic serialises them (compact) (CONTRACT §5).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import openai
import pytest
from pydantic_ai import Agent
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.openai import (
    OpenAIChatModel,
    OpenAIResponsesModel,
    OpenAIResponsesModelSettings,
)
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.clients.conftest import API_KEY, CLOCK, SPELLINGS, SYSTEM, Gateway, tool_turns


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def clock() -> str:
    """The time now."""
    return "noon"


@asynccontextmanager
async def agent_for(
    gateway: Gateway,
    model: str,
    conversation: str | None = None,
    tool: Callable[..., str] | None = None,
    on_responses: bool = False,
) -> AsyncIterator[Agent[None, str]]:
    """An agent on palaver; the conversation goes in its openai client's default headers.
    ``on_responses``: an ``OpenAIResponsesModel``, on the Responses API."""
    headers = {"X-Conversation-Id": conversation} if conversation else None
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key=API_KEY, default_headers=headers, max_retries=0
    ) as client:
        provider = OpenAIProvider(openai_client=client)
        kind = OpenAIResponsesModel if on_responses else OpenAIChatModel
        agent = Agent(kind(model, provider=provider), instructions=SYSTEM)
        if tool is not None:
            agent.tool_plain(tool)
        yield agent


async def ask(
    agent: Agent[None, str],
    question: str,
    streaming: bool,
    history: list[ModelMessage] | None = None,
    settings: ModelSettings | None = None,
) -> tuple[str, list[ModelMessage]]:
    """One run, ``run`` or ``run_stream`` (text streamed as deltas): its output and messages."""
    if not streaming:
        result = await agent.run(question, message_history=history, model_settings=settings)
        return result.output, result.all_messages()
    async with agent.run_stream(
        question, message_history=history, model_settings=settings
    ) as stream:
        deltas = [delta async for delta in stream.stream_text(delta=True, debounce_by=None)]
    assert deltas
    return "".join(deltas), stream.all_messages()


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_stream"])
async def test_plain_chat(gateway: Gateway, streaming: bool) -> None:
    async with agent_for(gateway, "plain") as agent:
        output, _ = await ask(agent, "hello", streaming)
    assert output == "[up] hello"
    [body] = gateway.bodies("plain")
    assert bool(body.get("stream")) is streaming
    assert gateway.last_sent("plain") == [f"system: {SYSTEM}", "user: hello"]


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_stream"])
async def test_message_history_is_sent_and_stored_once(gateway: Gateway, streaming: bool) -> None:
    async with agent_for(gateway, "history", "pai-history") as agent:
        first, messages = await ask(agent, "one", streaming)
        second, _ = await ask(agent, "two", streaming, history=messages)
    assert (first, second) == ("[up] one", "[up] two")
    expected = [f"system: {SYSTEM}", "user: one", "assistant: [up] one", "user: two"]
    assert gateway.last_sent("history") == expected
    assert gateway.items("pai-history") == [*expected, "assistant: [up] two"]


@pytest.mark.parametrize("gateway", SPELLINGS, indirect=True)
@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_stream"])
async def test_tool_loop_sends_and_stores_each_message_once(
    gateway: Gateway, streaming: bool
) -> None:
    async with agent_for(gateway, "tools", tool=weather) as agent:
        # the conversation named per run this time, in the model settings' extra headers
        settings: ModelSettings = {"extra_headers": {"X-Conversation-Id": "pai-tools"}}
        first, messages = await ask(agent, "Weather in Paris?", streaming, settings=settings)
        second, _ = await ask(agent, "And tomorrow?", streaming, messages, settings)
    assert (first, second) == ("[up] Weather in Paris?", "[up] And tomorrow?")
    assert len(gateway.bodies("tools")) == 4
    expected = tool_turns()
    assert gateway.last_sent("tools") == expected[:-1]
    assert gateway.items("pai-tools") == expected


@pytest.mark.parametrize("gateway", ["empty"], indirect=True)
async def test_tool_without_parameters_called_with_empty_arguments(gateway: Gateway) -> None:
    questions = ("What time is it?", "And now?")
    async with agent_for(gateway, "clock", "pai-clock", clock) as agent:
        first, messages = await ask(agent, questions[0], streaming=False)
        second, _ = await ask(agent, questions[1], False, messages)
    assert (first, second) == ("[up] What time is it?", "[up] And now?")
    expected = tool_turns(questions, CLOCK)
    assert gateway.last_sent("clock") == expected[:-1]
    assert gateway.items("pai-clock") == expected


# -- OpenAIResponsesModel: the Responses API (CONTRACT §9) ----------------------------------

CHAINED: OpenAIResponsesModelSettings = {"openai_previous_response_id": "auto"}


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_stream"])
async def test_responses_plain(gateway: Gateway, streaming: bool) -> None:
    async with agent_for(gateway, "resp-plain", on_responses=True) as agent:
        output, _ = await ask(agent, "hello", streaming)
    assert output == "[up] hello"
    [body] = gateway.bodies("resp-plain")
    assert bool(body.get("stream")) is streaming
    assert gateway.last_sent("resp-plain") == [f"system: {SYSTEM}", "user: hello"]


@pytest.mark.parametrize("streaming", [False, True], ids=["run", "run_stream"])
async def test_responses_three_turns_by_previous_response_id(
    gateway: Gateway, streaming: bool
) -> None:
    """Each run sends only its new message: the rest is palaver's stored chain."""
    history: list[ModelMessage] | None = None
    async with agent_for(gateway, "resp-chain", on_responses=True) as agent:
        for question in ("one", "two", "three"):
            output, history = await ask(agent, question, streaming, history, CHAINED)
            assert output == f"[up] {question}"
    assert history is not None
    last = history[-1]
    assert isinstance(last, ModelResponse)
    assert last.provider_response_id is not None
    async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key=API_KEY) as client:
        sent = [item async for item in client.responses.input_items.list(last.provider_response_id)]
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
@pytest.mark.parametrize("settings", [None, CHAINED], ids=["transcript", "chained"])
async def test_responses_tool_loop(
    gateway: Gateway, settings: OpenAIResponsesModelSettings | None
) -> None:
    async with agent_for(gateway, "resp-tools", tool=weather, on_responses=True) as agent:
        first, messages = await ask(agent, "Weather in Paris?", False, settings=settings)
        second, _ = await ask(agent, "And tomorrow?", False, messages, settings)
    assert (first, second) == ("[up] Weather in Paris?", "[up] And tomorrow?")
    assert len(gateway.bodies("resp-tools")) == 4
    assert gateway.last_sent("resp-tools") == tool_turns()[:-1]
