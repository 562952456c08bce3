"""Round-robin, failover before the first byte, and failures after it."""

from __future__ import annotations

import re
import socketserver
import threading
import time
from collections import Counter
from typing import ClassVar

import httpx2 as httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import free_port

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)


def test_round_robin_spreads_requests() -> None:
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a, ["m"]), provider_entry(b, ["m"])]) as url,
        _client(url) as client,
    ):
        answers = Counter(
            (client.chat.completions.create(model="m", messages=USER).choices[0].message.content)
            for _ in range(10)
        )
    assert answers == {"[a] hi": 5, "[b] hi": 5}


def test_first_provider_down_answers_from_second() -> None:
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "models": ["m"]}
    with (
        run_upstream("b") as b,
        run_palaver([dead, provider_entry(b, ["m"])]) as url,
        _client(url) as client,
    ):
        for _ in range(4):
            reply = client.chat.completions.create(model="m", messages=USER)
            assert reply.choices[0].message.content == "[b] hi"
        stream = client.chat.completions.create(model="m", messages=USER, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "[b] hi"


@pytest.mark.parametrize(
    "behaviour",
    [
        {"status": 500},
        {"status": 502},
        {"status": 429, "retry_after": "5"},
        {"hang": True},
        {"first_byte_delay": 10},
        {"not_json": True},
        {"stream_cut": True},
    ],
)
def test_failing_provider_is_skipped(behaviour: dict[str, object]) -> None:
    stream = bool(behaviour.pop("stream_cut", False))
    if stream:
        behaviour = {"cut_after": 0}
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver(
            [provider_entry(a, ["m"], first_byte_timeout=0.5), provider_entry(b, ["m"])]
        ) as url,
        _client(url) as client,
    ):
        a.behave(**behaviour)
        for _ in range(2):  # whichever comes first in the rotation, the answer is b's
            if stream:
                got = client.chat.completions.create(model="m", messages=USER, stream=True)
                text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
            else:
                reply = client.chat.completions.create(model="m", messages=USER)
                text = reply.choices[0].message.content or ""
            assert text == "[b] hi"
        assert len(b.chat_requests) == 2


def test_upstream_4xx_is_not_retried() -> None:
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a, ["m"]), provider_entry(b, ["m"])]) as url,
        _client(url) as client,
    ):
        a.behave(status=400)
        b.behave(status=400)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="m", messages=USER)
        assert len(a.chat_requests) + len(b.chat_requests) == 1


def test_wildcard_provider_404_tries_the_next() -> None:
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a), provider_entry(b)]) as url,
        _client(url) as client,
    ):
        a.behave(status=404)
        for _ in range(2):
            reply = client.chat.completions.create(model="m", messages=USER)
            assert reply.choices[0].message.content == "[b] hi"


def test_all_providers_down_is_a_prompt_5xx() -> None:
    dead = [
        {"name": f"dead{i}", "base_url": f"http://127.0.0.1:{free_port()}/v1"} for i in range(3)
    ]
    with run_palaver(dead) as url, _client(url) as client:
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=USER)
        assert caught.value.status_code == 502
        assert caught.value.code == "upstream_unreachable"
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=USER, stream=True)
        assert time.monotonic() - started < 5


def test_all_providers_hanging_is_504() -> None:
    with (
        run_upstream("a") as a,
        run_palaver([provider_entry(a, first_byte_timeout=0.3)]) as url,
        _client(url) as client,
    ):
        a.behave(hang=True)
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=USER, stream=True)
        assert caught.value.status_code == 504


def _sse(url: str) -> list[bytes]:
    body = {"model": "m", "messages": USER, "stream": True}
    with httpx.Client(timeout=20) as http:
        response = http.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return [e for e in response.content.split(b"\n\n") if e]


@pytest.mark.parametrize(
    ("kind", "behaviour"), [("cut", {"cut_after": 3}), ("stalled", {"chunk_delay": 1.0})]
)
def test_failure_after_first_chunk_ends_stream_with_error_event(
    kind: str, behaviour: dict[str, object]
) -> None:
    with (
        run_upstream("a") as a,
        run_palaver([provider_entry(a, chunk_timeout=0.3)]) as url,
    ):
        a.behave(**behaviour)
        events = _sse(url)
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == {"cut": "upstream_error", "stalled": "upstream_timeout"}[kind]
    first = orjson.loads(events[0].removeprefix(b"data: "))
    assert first["choices"][0]["delta"]["role"] == "assistant"


def test_sse_headers_stop_buffering(palaver_url: str) -> None:
    body = {"model": "m", "messages": USER, "stream": True}
    with (
        httpx.Client() as http,
        http.stream("POST", palaver_url + "/v1/chat/completions", json=body) as r,
    ):
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["x-accel-buffering"] == "no"
        assert b"".join(r.iter_bytes()).endswith(b"data: [DONE]\n\n")


class _DropFirstConnection(socketserver.BaseRequestHandler):
    """Reads a request; drops the first connection unanswered, answers the later ones."""

    seen: ClassVar[list[int]] = []

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.request.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        while len(body) < length:
            body += self.request.recv(65536)
        self.seen.append(len(body))
        if len(self.seen) == 1:
            return  # closed without a word, as a server closing a kept-alive connection
        answer = orjson.dumps(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "second try"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
        self.request.sendall(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(answer)}\r\n\r\n".encode()
            + answer
        )


def test_connection_dropped_before_the_answer_is_retried_once() -> None:
    _DropFirstConnection.seen = []
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _DropFirstConnection)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        only = {"name": "flaky", "base_url": f"http://127.0.0.1:{port}/v1"}
        with run_palaver([only]) as url, _client(url) as client:
            reply = client.chat.completions.create(model="m", messages=USER)
        assert reply.choices[0].message.content == "second try"
        assert len(_DropFirstConnection.seen) == 2
    finally:
        server.shutdown()
        server.server_close()
