"""Edge cases found by outside testing (issue 8): deep JSON, query-string soup, id anchoring,
custom tool calls, metadata updates, item validation, routing, HEAD and 405."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx2 as httpx
import openai
import orjson
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.upstream import Upstream

JSON = {"content-type": "application/json"}
USER = {"role": "user", "content": "hi"}


@pytest.fixture(scope="module")
def edge() -> Iterator[tuple[Upstream, str]]:
    """One upstream and one palaver with the cache on (its key re-encodes the request)."""
    with (
        run_upstream("up") as up,
        run_palaver([provider_entry(up)], cache={"enabled": True}) as url,
    ):
        yield up, url


def client_for(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)


def raw_request(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is over a fresh connection; the whole answer (it closes)."""
    where = urlsplit(url)
    assert where.hostname is not None
    assert where.port is not None
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    return error


def conversation_ids(url: str) -> list[str]:
    listed = httpx.get(url + "/v1/conversations", params={"limit": 100}).json()
    return [c["id"] for c in listed["data"]]


# --- 12: JSON nested deeper than it can be written back -------------------------------------


def nested(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


MAX_DEPTH = 250  # what palaver accepts: orjson writes 254 levels, a few are kept for envelopes


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1, 254, 255, 500, 1023, 1024])
def test_deep_chat_body(edge: tuple[Upstream, str], depth: int) -> None:
    """The body object, messages, a message, then arrays: ``depth`` levels in all."""
    upstream, url = edge
    before = len(upstream.requests)
    for conversation in (None, f"deep-{depth}"):
        message = b'{"role": "user", "content": "hi", "x": ' + nested(depth - 3) + b"}"
        extra = b"" if conversation is None else f', "conversation": "{conversation}"'.encode()
        raw = b'{"model": "m", "messages": [' + message + b"]" + extra + b"}"
        response = httpx.post(url + "/v1/chat/completions", content=raw, headers=JSON)
        if depth <= MAX_DEPTH:
            assert response.status_code == 200, response.text
            continue
        error = assert_error(response, 400, None)
        assert error["code"] == "invalid_json"
        assert "deep" in error["message"]
    if depth > MAX_DEPTH:
        assert len(upstream.requests) == before
        assert f"deep-{depth}" not in conversation_ids(url)
    else:  # stored, and sent again with the next turn
        again = {"model": "m", "messages": [USER], "conversation": f"deep-{depth}"}
        assert httpx.post(url + "/v1/chat/completions", json=again).status_code == 200
        assert len(upstream.chat_requests[-1].body["messages"]) == 3


@pytest.mark.parametrize("depth", [MAX_DEPTH, 254, 500, 1023, 1024])
def test_deep_conversation_bodies(edge: tuple[Upstream, str], depth: int) -> None:
    _, url = edge
    item = b'{"type": "message", "role": "user", "content": "hi", "x": ' + nested(depth - 3)
    raw = b'{"items": [' + item + b"}]}"
    created = httpx.post(url + "/v1/conversations", content=raw, headers=JSON)
    target = httpx.post(url + "/v1/conversations", json={}).json()["id"]
    added = httpx.post(f"{url}/v1/conversations/{target}/items", content=raw, headers=JSON)
    metadata = b'{"metadata": {"a": "b"}, "x": ' + nested(depth - 1) + b"}"
    updated = httpx.post(f"{url}/v1/conversations/{target}", content=metadata, headers=JSON)
    for response in (created, added, updated):
        if depth <= MAX_DEPTH:
            assert response.status_code == 200, response.text
        else:
            assert assert_error(response, 400, None)["code"] == "invalid_json"
    items = httpx.get(f"{url}/v1/conversations/{target}/items").json()["data"]
    assert len(items) == (1 if depth <= MAX_DEPTH else 0)


# --- 13: query strings ------------------------------------------------------------------------


QUERY_SOUP = [
    "limit=%C2%B2",  # ² passes str.isdigit()
    "limit=%E2%91%A0",  # ①
    "limit=%D9%A3",  # Arabic-Indic three
    "limit=99999999999999999999",
    "limit=" + "9" * 5000,
    "limit=-1",
    "limit=+5",
    "limit=%205",
    "limit=%FF",
    "limit=1%00",
]


@pytest.mark.parametrize("query", QUERY_SOUP)
def test_bad_limit_is_400(edge: tuple[Upstream, str], query: str) -> None:
    _, url = edge
    target = httpx.post(url + "/v1/conversations", json={}).json()["id"]
    for path in ("/v1/conversations", f"/v1/conversations/{target}/items"):
        assert_error(httpx.get(f"{url}{path}?{query}"), 400, "limit")


@pytest.mark.parametrize(
    "query", ["%FF=1", "after=%FF", "order=%FF", "after=%ED%A0%80", "a=%FF%FE&limit=2", "%"]
)
def test_query_string_soup_is_never_a_500(edge: tuple[Upstream, str], query: str) -> None:
    _, url = edge
    target = httpx.post(url + "/v1/conversations", json={}).json()["id"]
    for path in ("/v1/conversations", f"/v1/conversations/{target}/items"):
        response = httpx.get(f"{url}{path}?{query}")
        assert response.status_code in (200, 400), response.text
        if response.status_code == 400:
            assert_error(response, 400, response.json()["error"]["param"])


def test_raw_non_ascii_query_bytes(edge: tuple[Upstream, str]) -> None:
    """Raw bytes outside ASCII: the HTTP parser already answers 400; never a 500 or a hang."""
    _, url = edge
    for query in (b"limit=\xc2\xb2", b"limit=\xff", b"after=\xff\xfe"):
        answer = raw_request(
            url,
            b"GET /v1/conversations?"
            + query
            + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 400 "), answer


# --- 14: ids match exactly, no trailing newline -----------------------------------------------


def test_conversation_field_with_trailing_newline(edge: tuple[Upstream, str]) -> None:
    upstream, url = edge
    before = len(upstream.requests)
    body = {"model": "m", "messages": [USER], "conversation": "nl\n"}
    assert_error(httpx.post(url + "/v1/chat/completions", json=body), 400, "conversation")
    assert len(upstream.requests) == before
    assert "nl\n" not in conversation_ids(url)
    for method in ("GET", "DELETE"):
        response = httpx.request(method, url + "/v1/conversations/nl%0A")
        assert response.status_code == 404, response.text
        assert httpx.get(url + "/v1/conversations/nl%0A/items").status_code == 404


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f\n"}}]),
        (
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "n\n", "schema": {}}},
        ),
    ],
)
def test_names_with_trailing_newline(edge: tuple[Upstream, str], field: str, value: Any) -> None:
    upstream, url = edge
    before = len(upstream.requests)
    body = {"model": "m", "messages": [USER], field: value}
    response = httpx.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert str(response.json()["error"]["param"]).startswith(field)
    assert len(upstream.requests) == before


# --- 15: custom tool calls ----------------------------------------------------------------------


CUSTOM_CALL = {"type": "custom", "id": "call_c1", "custom": {"name": "grep", "input": "foo bar"}}
CUSTOM_TURN: list[Any] = [
    {"role": "user", "content": "find foo"},
    {"role": "assistant", "content": None, "tool_calls": [CUSTOM_CALL]},
    {"role": "tool", "tool_call_id": "call_c1", "content": "found 3"},
    {"role": "user", "content": "thanks"},
]
CUSTOM_TOOLS: Any = [{"type": "custom", "custom": {"name": "grep"}}]


def test_custom_tool_calls_reach_the_upstream(edge: tuple[Upstream, str]) -> None:
    upstream, url = edge
    with client_for(url) as client:
        reply = client.chat.completions.create(model="m", messages=CUSTOM_TURN, tools=CUSTOM_TOOLS)
    assert reply.choices[0].message.content == "[up] thanks"
    sent = upstream.chat_requests[-1].body
    assert sent["messages"] == CUSTOM_TURN
    assert sent["tools"] == CUSTOM_TOOLS


def test_custom_tool_calls_are_stored_and_listed(edge: tuple[Upstream, str]) -> None:
    upstream, url = edge
    with client_for(url) as client:
        client.chat.completions.create(
            model="m",
            messages=CUSTOM_TURN,
            tools=CUSTOM_TOOLS,
            extra_body={"conversation": "custom-calls"},
        )
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "again"}],
            extra_body={"conversation": "custom-calls"},
        )
        items = list(client.conversations.items.list("custom-calls"))
    assert upstream.chat_requests[-1].body["messages"][:4] == CUSTOM_TURN
    assert [item.type for item in items] == [
        "message",
        "custom_tool_call",
        "custom_tool_call_output",
        "message",
        "message",
        "message",
        "message",
    ]
    call, output = items[1].model_dump(), items[2].model_dump()
    assert (call["call_id"], call["name"], call["input"]) == ("call_c1", "grep", "foo bar")
    assert (output["call_id"], output["output"]) == ("call_c1", "found 3")


def test_custom_tool_call_items_round_trip(edge: tuple[Upstream, str]) -> None:
    upstream, url = edge
    with client_for(url) as client:
        created = client.conversations.create(
            items=[
                {"type": "message", "role": "user", "content": "find foo"},
                {"type": "custom_tool_call", "call_id": "c9", "name": "grep", "input": "foo"},
                {"type": "custom_tool_call_output", "call_id": "c9", "output": "none"},
            ]
        )
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "ok"}],
            extra_body={"conversation": created.id},
        )
        items = list(client.conversations.items.list(created.id))
    assert upstream.chat_requests[-1].body["messages"][:3] == [
        {"role": "user", "content": "find foo"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c9", "type": "custom", "custom": {"name": "grep", "input": "foo"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c9", "content": "none"},
    ]
    assert [item.type for item in items][:3] == [
        "message",
        "custom_tool_call",
        "custom_tool_call_output",
    ]


@pytest.mark.parametrize(
    ("call", "param"),
    [
        ({"type": "custom", "id": "c", "custom": {"name": "g"}}, "custom.input"),
        ({"type": "custom", "id": "c", "custom": {"name": "g", "input": 5}}, "custom.input"),
        ({"type": "custom", "id": "", "custom": {"name": "g", "input": ""}}, "id"),
        ({"type": "custom", "id": "c"}, "custom"),
        ({"type": "robot", "id": "c"}, "type"),
        ({"id": "c", "function": {"name": "f", "arguments": "{}"}}, "type"),
    ],
)
def test_bad_tool_calls(edge: tuple[Upstream, str], call: Any, param: str) -> None:
    upstream, url = edge
    before = len(upstream.requests)
    messages = [USER, {"role": "assistant", "tool_calls": [call]}]
    response = httpx.post(url + "/v1/chat/completions", json={"model": "m", "messages": messages})
    assert_error(response, 400, "messages[1].tool_calls[0]." + param)
    assert len(upstream.requests) == before


# --- 16: updating a conversation needs its metadata -------------------------------------------


def test_update_requires_metadata(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    created = httpx.post(url + "/v1/conversations", json={"metadata": {"keep": "me"}}).json()
    target = f"{url}/v1/conversations/{created['id']}"
    assert_error(httpx.post(target, json={}), 400, "metadata")
    assert_error(httpx.post(target, content=b""), 400, "metadata")
    assert_error(httpx.post(target, json={"metadata": "x"}), 400, "metadata")
    assert_error(httpx.post(target, json={"metadata": []}), 400, "metadata")
    assert httpx.get(target).json()["metadata"] == {"keep": "me"}
    assert httpx.post(target, json={"metadata": {"new": "one"}}).json()["metadata"] == {
        "new": "one"
    }
    assert httpx.post(target, json={"metadata": None}).json()["metadata"] == {}


# --- 17: items are validated like chat messages -------------------------------------------------


def item(**fields: Any) -> dict[str, Any]:
    return fields


BAD_ITEMS: list[tuple[str, list[Any], str]] = [
    (
        "image in a system message",
        [
            item(
                type="message",
                role="system",
                content=[{"type": "input_image", "image_url": "https://x/y.png"}],
            )
        ],
        "items[0].content[0].type",
    ),
    (
        "empty call id",
        [item(type="function_call", call_id="", name="f", arguments="{}")],
        "items[0].call_id",
    ),
    (
        "missing call id",
        [item(type="function_call", name="f", arguments="{}")],
        "items[0].call_id",
    ),
    (
        "arguments an object",
        [item(type="function_call", call_id="c", name="f", arguments={"a": 1})],
        "items[0].arguments",
    ),
    (
        "name a number",
        [item(type="function_call", call_id="c", name=5, arguments="{}")],
        "items[0].name",
    ),
    (
        "output an object",
        [item(type="function_call_output", call_id="c", output={"a": 1})],
        "items[0].output",
    ),
    (
        "output call id a number",
        [item(type="function_call_output", call_id=7, output="x")],
        "items[0].call_id",
    ),
    (
        "image in a tool output",
        [
            item(
                type="function_call_output",
                call_id="c",
                output=[{"type": "input_image", "image_url": "https://x/y.png"}],
            )
        ],
        "items[0].output[0].type",
    ),
    (
        "text not a string",
        [item(type="message", role="user", content=[{"type": "input_text", "text": 5}])],
        "items[0].content[0].text",
    ),
    (
        "text part without text",
        [item(type="message", role="user", content=[{"type": "input_text"}])],
        "items[0].content[0].text",
    ),
    (
        "image url an object",
        [item(type="message", role="user", content=[{"type": "input_image", "image_url": {}}])],
        "items[0].content[0].image_url",
    ),
    (
        "bad image detail",
        [
            item(
                type="message",
                role="user",
                content=[{"type": "input_image", "image_url": "https://x", "detail": "max"}],
            )
        ],
        "items[0].content[0].detail",
    ),
    ("tool role", [item(type="message", role="tool", content="x")], "items[0].role"),
    ("no role", [item(type="message", content="x")], "items[0].role"),
    ("content a number", [item(type="message", role="user", content=5)], "items[0].content"),
    ("content missing", [item(type="message", role="user")], "items[0].content"),
    ("part a string", [item(type="message", role="user", content=["x"])], "items[0].content[0]"),
    ("type a number", [item(type=5, role="user", content="x")], "items[0].type"),
    ("item a string", ["hello"], "items[0]"),
    (
        "refusal from a user",
        [item(type="message", role="user", content=[{"type": "refusal", "refusal": "no"}])],
        "items[0].content[0].type",
    ),
    (
        "custom input a number",
        [item(type="custom_tool_call", call_id="c", name="g", input=1)],
        "items[0].input",
    ),
    (
        "second item bad",
        [
            item(type="message", role="user", content="fine"),
            item(type="function_call", call_id="c", name="f", arguments="{}"),
            item(type="function_call", call_id="", name="f", arguments="{}"),
        ],
        "items[2].call_id",
    ),
    ("21 items", [item(type="message", role="user", content="x")] * 21, "items"),
    ("items not a list", "x", "items"),  # type: ignore[list-item]
]


@pytest.mark.parametrize(("name", "items", "param"), BAD_ITEMS, ids=[case[0] for case in BAD_ITEMS])
def test_bad_items_are_rejected_when_created(
    edge: tuple[Upstream, str], name: str, items: Any, param: str
) -> None:
    upstream, url = edge
    before_ids = conversation_ids(url)
    before = len(upstream.requests)
    assert_error(httpx.post(url + "/v1/conversations", json={"items": items}), 400, param)
    assert conversation_ids(url) == before_ids
    target = httpx.post(url + "/v1/conversations", json={}).json()["id"]
    added = httpx.post(f"{url}/v1/conversations/{target}/items", json={"items": items})
    assert_error(added, 400, param)
    assert httpx.get(f"{url}/v1/conversations/{target}/items").json()["data"] == []
    assert len(upstream.requests) == before


def test_twenty_items_are_fine(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    items = [{"type": "message", "role": "user", "content": str(i)} for i in range(20)]
    created = httpx.post(url + "/v1/conversations", json={"items": items})
    assert created.status_code == 200, created.text
    added = httpx.post(
        f"{url}/v1/conversations/{created.json()['id']}/items", json={"items": items}
    )
    assert added.status_code == 200, added.text
    assert len(added.json()["data"]) == 20


def test_valid_items_of_every_kind(edge: tuple[Upstream, str]) -> None:
    upstream, url = edge
    items: Any = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "d"}]},
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_text", "text": "r"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "done", "annotations": []}],
        },
    ]
    with client_for(url) as client:
        created = client.conversations.create(items=items)
        client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "next"}],
            extra_body={"conversation": created.id},
        )
    assert upstream.chat_requests[-1].body["messages"][:5] == [
        {"role": "developer", "content": "d"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "r"},
        {"role": "assistant", "content": "done"},
    ]


# --- 18: routing, HEAD and 405 ----------------------------------------------------------------


def test_prefix_is_a_whole_segment(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    httpx.post(url + "/v1/conversations", json={})  # there is something to find
    for path in ("/v1/conversationsXYZ", "/conversationsXYZ", "/v1/conversations-x/items"):
        for method in ("GET", "POST", "DELETE"):
            response = httpx.request(method, url + path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "unknown_url"
    assert httpx.get(url + "/v1/modelsX").json()["error"]["code"] == "unknown_url"


def test_encoded_slash_stays_in_the_id(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    body = {"model": "m", "messages": [USER], "conversation": "slashed"}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
    assert httpx.get(url + "/v1/conversations/slashed/items").status_code == 200
    for path in (
        "/v1/conversations/slashed%2Fitems",
        "/v1/conversations/slashed%2fitems",
        "/v1/conversations/slashed%2Fitems%2F",
    ):
        answer = raw_request(
            url, f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 404"), answer
        assert b"conversation_not_found" in answer
    # an encoded character that may be part of an id is just that character
    assert httpx.get(url + "/v1/conversations/%73lashed").status_code == 200


def head_and_get(url: str) -> tuple[httpx.Response, httpx.Response]:
    return httpx.head(url), httpx.get(url)


def test_head_on_every_get_route(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    body = {"model": "m", "messages": [USER], "conversation": "headed"}
    assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
    first_item = httpx.get(url + "/v1/conversations/headed/items").json()["data"][0]["id"]
    paths = [
        "/health",
        "/v1/models",
        "/models",
        "/v1/models/up-model",
        "/v1/models/nope",  # a 404 is answered to HEAD as well
        "/v1/conversations",
        "/v1/conversations/",
        "/v1/conversations/headed",
        "/v1/conversations/headed/items",
        f"/v1/conversations/headed/items/{first_item}",
        "/v1/conversations/missing",
        "/v1/nothing-here",
    ]
    for path in paths:
        head, get = head_and_get(url + path)
        assert head.status_code == get.status_code, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
        assert head.headers["content-length"] == str(len(get.content)), path


def test_head_over_a_raw_connection(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    two = (
        b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answer = raw_request(url, two)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-length: 15" in head.lower()
    assert rest.startswith(b"HTTP/1.1 200"), rest  # no body bytes between the two answers
    assert rest.endswith(b'{"status":"ok"}')


ALLOWED = [
    ("/health", "POST", "GET, HEAD"),
    ("/v1/models", "DELETE", "GET, HEAD"),
    ("/models", "PUT", "GET, HEAD"),
    ("/v1/models/up-model", "POST", "GET, HEAD"),
    ("/v1/chat/completions", "GET", "POST"),
    ("/chat/completions", "HEAD", "POST"),
    ("/v1/chat/completions/", "PUT", "POST"),
    ("/v1/conversations", "PUT", "GET, HEAD, POST"),
    ("/v1/conversations", "DELETE", "GET, HEAD, POST"),
    ("/v1/conversations/abc", "PUT", "DELETE, GET, HEAD, POST"),
    ("/v1/conversations/abc", "PATCH", "DELETE, GET, HEAD, POST"),
    ("/v1/conversations/abc/items", "DELETE", "GET, HEAD, POST"),
    ("/v1/conversations/abc/items/it_1", "POST", "GET, HEAD"),
    ("/conversations/abc/items/it_1", "OPTIONS", "GET, HEAD"),
]


@pytest.mark.parametrize(("path", "method", "allow"), ALLOWED)
def test_405_carries_allow(edge: tuple[Upstream, str], path: str, method: str, allow: str) -> None:
    _, url = edge
    response = httpx.request(method, url + path)
    assert response.status_code == 405, response.text
    assert response.headers["allow"] == allow
    if method != "HEAD":
        error = assert_error(response, 405, None)
        assert error["code"] == "method_not_allowed"


def test_head_answer_matches_get_headers_for_conversations(edge: tuple[Upstream, str]) -> None:
    _, url = edge
    created = httpx.post(url + "/v1/conversations", json={"metadata": {"a": "b"}}).json()
    head, get = head_and_get(f"{url}/v1/conversations/{created['id']}")
    assert head.status_code == get.status_code == 200
    assert head.headers["content-length"] == get.headers["content-length"]
    assert orjson.loads(get.content)["id"] == created["id"]
