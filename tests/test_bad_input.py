"""Malformed requests: each a 4xx in OpenAI error shape naming the field, none reaching upstream."""

from __future__ import annotations

from typing import Any

import httpx2 as httpx
import orjson
import pytest

from tests.upstream import Upstream

OK_MESSAGES = [{"role": "user", "content": "hi"}]


def body(**fields: Any) -> bytes:
    request: dict[str, Any] = {"model": "m", "messages": OK_MESSAGES}
    request.update(fields)
    return orjson.dumps({k: v for k, v in request.items() if v is not ...})


def msg(**fields: Any) -> bytes:
    return body(messages=[fields])


JSON = {"content-type": "application/json"}
DEEP = b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"

CASES: list[tuple[str, bytes, dict[str, str], int, str | None]] = [
    ("invalid json", b'{"model": "m",', JSON, 400, None),
    ("empty body", b"", JSON, 400, None),
    ("array body", b"[]", JSON, 400, None),
    ("string body", b'"hello"', JSON, 400, None),
    ("null body", b"null", JSON, 400, None),
    ("invalid utf-8", b'{"model": "\xff\xfe"}', JSON, 400, None),
    ("deep nesting", DEEP, JSON, 400, None),
    ("missing model", body(model=...), JSON, 400, "model"),
    ("empty model", body(model=""), JSON, 400, "model"),
    ("model not a string", body(model=5), JSON, 400, "model"),
    ("missing messages", body(messages=...), JSON, 400, "messages"),
    ("messages null", body(messages=None), JSON, 400, "messages"),
    ("empty messages", body(messages=[]), JSON, 400, "messages"),
    ("messages a string", body(messages="hi"), JSON, 400, "messages"),
    ("message a string", body(messages=["hi"]), JSON, 400, "messages[0]"),
    ("missing role", msg(content="hi"), JSON, 400, "messages[0].role"),
    ("unknown role", msg(role="robot", content="hi"), JSON, 400, "messages[0].role"),
    ("role not a string", msg(role=1, content="hi"), JSON, 400, "messages[0].role"),
    ("missing content", msg(role="user"), JSON, 400, "messages[0].content"),
    ("content a number", msg(role="user", content=5), JSON, 400, "messages[0].content"),
    ("content empty list", msg(role="user", content=[]), JSON, 400, "messages[0].content"),
    (
        "unknown part type",
        msg(role="user", content=[{"type": "video", "video": "x"}]),
        JSON,
        400,
        "messages[0].content[0].type",
    ),
    (
        "text part without text",
        msg(role="user", content=[{"type": "text"}]),
        JSON,
        400,
        "messages[0].content[0].text",
    ),
    (
        "image part without url",
        msg(role="user", content=[{"type": "image_url", "image_url": {}}]),
        JSON,
        400,
        "messages[0].content[0].image_url.url",
    ),
    ("empty assistant", msg(role="assistant"), JSON, 400, "messages[0].content"),
    ("tool without id", msg(role="tool", content="42"), JSON, 400, "messages[0].tool_call_id"),
    (
        "tool_calls not a list",
        msg(role="assistant", tool_calls="x"),
        JSON,
        400,
        "messages[0].tool_calls",
    ),
    (
        "tool call without function",
        msg(role="assistant", tool_calls=[{"id": "c", "type": "function"}]),
        JSON,
        400,
        "messages[0].tool_calls[0].function",
    ),
    ("temperature too high", body(temperature=3), JSON, 400, "temperature"),
    ("temperature a string", body(temperature="hot"), JSON, 400, "temperature"),
    ("top_p negative", body(top_p=-1), JSON, 400, "top_p"),
    ("n zero", body(n=0), JSON, 400, "n"),
    ("n a string", body(n="2"), JSON, 400, "n"),
    ("stream a string", body(stream="yes"), JSON, 400, "stream"),
    ("stream_options a list", body(stream_options=[1]), JSON, 400, "stream_options"),
    ("max_tokens zero", body(max_tokens=0), JSON, 400, "max_tokens"),
    ("five stop strings", body(stop=["a", "b", "c", "d", "e"]), JSON, 400, "stop"),
    ("tools not a list", body(tools={"type": "function"}), JSON, 400, "tools"),
    (
        "bad function name",
        body(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        JSON,
        400,
        "tools[0].function.name",
    ),
    ("unknown format", body(response_format={"type": "xml"}), JSON, 400, "response_format.type"),
    ("bad tool_choice", body(tool_choice="sometimes"), JSON, 400, "tool_choice"),
    ("penalty out of range", body(presence_penalty=3), JSON, 400, "presence_penalty"),
    ("logit_bias not numbers", body(logit_bias={"1": "x"}), JSON, 400, "logit_bias"),
    ("top_logprobs too high", body(top_logprobs=21), JSON, 400, "top_logprobs"),
    ("metadata not strings", body(metadata={"a": 1}), JSON, 400, "metadata"),
    ("bad conversation id", body(conversation="bad id!"), JSON, 400, "conversation"),
    ("conversation too long", body(conversation="x" * 129), JSON, 400, "conversation"),
    ("text/plain", body(), {"content-type": "text/plain"}, 415, None),
    ("form encoded", body(), {"content-type": "application/x-www-form-urlencoded"}, 415, None),
    ("huge body", b'{"model": "' + b"x" * (9 * 1024 * 1024) + b'"}', JSON, 413, None),
]


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.fixture(scope="module")
def shared() -> Any:
    from tests.conftest import provider_entry, run_palaver, run_upstream

    with run_upstream("up") as up, run_palaver([provider_entry(up)]) as url:
        yield up, url


@pytest.mark.parametrize(
    ("name", "raw", "headers", "status", "param"), CASES, ids=[c[0] for c in CASES]
)
def test_malformed_request(
    shared: tuple[Upstream, str],
    name: str,
    raw: bytes,
    headers: dict[str, str],
    status: int,
    param: str | None,
) -> None:
    upstream, url = shared
    before = len(upstream.requests)
    response = httpx.post(url + "/v1/chat/completions", content=raw, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert "Traceback" not in error["message"]
    assert "regex" not in error["message"]  # said in words
    assert "\\Z" not in error["message"]
    assert len(upstream.requests) == before


def test_no_content_type_is_accepted(shared: tuple[Upstream, str]) -> None:
    _, url = shared
    response = httpx.post(url + "/v1/chat/completions", content=body(), timeout=10)
    assert response.status_code == 200
