"""End to end through the official openai SDK: palaver in front of the loopback test upstream."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.upstream import Upstream

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]


def test_create(client: openai.OpenAI, upstream: Upstream) -> None:
    completion = client.chat.completions.create(model="gpt-4o", messages=USER)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "[up1] hello there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == 12
    sent = upstream.chat_requests[0]
    assert sent.body == {"model": "gpt-4o", "messages": USER}
    assert sent.headers["authorization"] == "Bearer sk-upstream-up1"


def test_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.created for c in chunks} == {chunks[0].created}
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks if c.choices]
    assert all(c.choices[0].finish_reason is None for c in content[:-1])
    assert content[-1].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in content) == "[up1] hello there"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 12


def test_stream_without_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    assert all(c.choices for c in chunks)


def test_n_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=USER, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    chunks = list(client.chat.completions.create(model="m", messages=USER, n=2, stream=True))
    for index in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == index]
        assert mine[0].delta.role == "assistant"
        assert "".join(ch.delta.content or "" for ch in mine) == "[up1] hello there"
        assert [ch.finish_reason for ch in mine][-1] == "stop"
        assert all(ch.finish_reason is None for ch in mine[:-1])


TOOLS: list[ChatCompletionFunctionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def test_streamed_tool_calls(client: openai.OpenAI, upstream: Upstream) -> None:
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=USER,
            tools=TOOLS,
            stream=True,
        )
    )
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"name": "", "arguments": "", "id": ""})
                entry["id"] += call.id or ""
                if call.function:
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
    assert calls[0]["name"] == "get_weather"
    assert calls[1]["name"] == "get_time"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[1]["id"] == "call_1"
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert upstream.chat_requests[0].body["tools"] == TOOLS


def test_unknown_and_known_parameters_are_forwarded(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    cached: Any = [{"role": "user", "content": "x", "cache_control": {"type": "ephemeral"}}]
    client.chat.completions.create(
        model="m",
        messages=cached,
        response_format=response_format,
        seed=7,
        temperature=0.2,
        extra_body={"top_k": 40, "provider": {"order": ["a", "b"]}, "conversation": "c1"},
    )
    body = upstream.chat_requests[0].body
    assert body["response_format"] == response_format
    assert body["top_k"] == 40
    assert body["provider"] == {"order": ["a", "b"]}
    assert body["seed"] == 7
    assert body["temperature"] == 0.2
    assert body["messages"][0]["cache_control"] == {"type": "ephemeral"}
    assert "conversation" not in body


def test_models_list() -> None:
    from tests.conftest import run_upstream

    with (
        run_upstream("a", models=["alpha-1", "alpha-2"]) as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a), provider_entry(b, ["beta-x"])]) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        listed = {(m.id, m.owned_by) for m in client.models.list()}
    assert listed == {("alpha-1", "a"), ("alpha-2", "a"), ("beta-x", "b")}


def test_models_list_echo() -> None:
    with (
        run_palaver() as url,
        openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        assert [m.id for m in client.models.list()] == ["echo"]
        reply = client.chat.completions.create(model="gpt-3.5-turbo", messages=USER)
        assert reply.choices[0].message.content == "hello there"
        words = [
            c.choices[0].delta.content
            for c in client.chat.completions.create(model="x", messages=USER, stream=True)
            if c.choices and c.choices[0].delta.content
        ]
        assert words == ["hello ", "there"]


@pytest.mark.parametrize(
    ("behaviour", "error_class", "status"),
    [
        ({"status": 400}, openai.BadRequestError, 400),
        ({"status": 403}, openai.PermissionDeniedError, 403),
        ({"status": 422}, openai.UnprocessableEntityError, 422),
        ({"status": 429, "retry_after": "1"}, openai.RateLimitError, 429),
        ({"status": 500}, openai.InternalServerError, 502),
        ({"status": 503}, openai.InternalServerError, 502),
        ({"not_json": True}, openai.InternalServerError, 502),
        ({"hang": True}, openai.InternalServerError, 504),
    ],
)
def test_upstream_errors_raise_the_right_sdk_exception(
    client: openai.OpenAI,
    upstream: Upstream,
    behaviour: dict[str, object],
    error_class: type[openai.APIStatusError],
    status: int,
) -> None:
    upstream.behave(**behaviour)
    with pytest.raises(error_class) as caught:
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    if status < 500:
        assert body["message"] == f"up1 says {status}"
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"


def test_palaver_errors_raise_the_right_sdk_exception(client: openai.OpenAI) -> None:
    robot: Any = [{"role": "robot", "content": "x"}]
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=robot)
    assert bad.value.param == "messages[0].role"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=USER, temperature=5)


def test_unknown_model_is_404() -> None:
    with (
        run_palaver(
            [{"name": "x", "base_url": "http://127.0.0.1:9/v1", "models": ["only"]}]
        ) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
        pytest.raises(openai.NotFoundError) as caught,
    ):
        client.chat.completions.create(model="other", messages=USER)
    assert caught.value.code == "model_not_found"


async def test_async_client(palaver_url: str, upstream: Upstream) -> None:
    async with openai.AsyncOpenAI(
        base_url=palaver_url + "/v1", api_key="k", max_retries=0
    ) as client:
        completion = await client.chat.completions.create(model="m", messages=USER)
        assert completion.choices[0].message.content == "[up1] hello there"
        stream = await client.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        usage = None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == "[up1] hello there"
        assert usage is not None
        assert usage.completion_tokens == 7
        models = [m.id async for m in client.models.list()]
        assert models == ["up-model"]
        upstream.behave(status=429, times=1)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="m", messages=USER)


def test_models_retrieve() -> None:
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a, ["alpha"]), provider_entry(b, ["beta/v1"])]) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client,
    ):
        model = client.models.retrieve("alpha")
        assert (model.id, model.owned_by, model.object) == ("alpha", "a", "model")
        assert client.models.retrieve("beta/v1").owned_by == "b"
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("gamma")
        assert caught.value.code == "model_not_found"
