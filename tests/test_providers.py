"""Providers as a client sees them: timeouts, plain error messages, echo, the model list."""

from __future__ import annotations

import logging
import re
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import httpx2 as httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.servers import free_port
from tests.upstream import Upstream

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
WORDS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "one two three four five"}]

# What must never reach a client: library names, exception reprs, errno texts, tracebacks.
LEAKS = re.compile(
    r"aiohttp|ssl:default|<\w+|errno|Traceback|Cannot connect|Client\w*Error|"
    r"TransferEncoding|ServerDisconnected|Payload|\[Errno",
    re.IGNORECASE,
)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=20)


def _text(stream: Any) -> str:
    return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[Upstream]:
    with run_upstream("shared") as upstream:
        yield upstream


@pytest.fixture
def shared(shared_upstream: Upstream) -> Upstream:
    shared_upstream.reset()
    return shared_upstream


# -- timeouts (issue 8, item 9) -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_first_byte_timeout_covers_a_slow_start(stream: bool) -> None:
    """first_byte_timeout > delay > chunk_timeout: the answer comes, streaming or not."""
    with run_upstream("a") as a, run_palaver([provider_entry(a, chunk_timeout=0.2)]) as url:
        a.behave(first_byte_delay=0.8)
        with _client(url) as client:
            if stream:
                text = _text(client.chat.completions.create(model="m", messages=USER, stream=True))
            else:
                reply = client.chat.completions.create(model="m", messages=USER)
                text = reply.choices[0].message.content or ""
    assert text == "[a] hi"


@pytest.mark.parametrize("stream", [False, True])
def test_first_byte_timeout_gives_up_on_a_slower_start(shared: Upstream, stream: bool) -> None:
    """delay > first_byte_timeout (chunk_timeout larger): 504 once first_byte_timeout passed."""
    entry = provider_entry(shared, first_byte_timeout=0.3, chunk_timeout=5)
    with run_palaver([entry]) as url, _client(url) as client:
        shared.behave(first_byte_delay=2.0)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=USER, stream=stream)
        elapsed = time.monotonic() - started
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    assert "within 0.3 s" in caught.value.message
    assert elapsed < 1.5


def test_chunk_gaps_are_bounded_by_chunk_timeout_not_first_byte() -> None:
    """After the first chunk only chunk_timeout counts: gaps longer than first_byte_timeout
    but shorter than chunk_timeout are fine; longer ones end the stream with an error event."""
    with run_upstream("a") as a:
        patient = provider_entry(a, first_byte_timeout=0.2, chunk_timeout=3)
        with run_palaver([patient]) as url, _client(url) as client:
            a.behave(chunk_delay=0.4)
            text = _text(client.chat.completions.create(model="m", messages=USER, stream=True))
        assert text == "[a] hi"
        strict = provider_entry(a, first_byte_timeout=3, chunk_timeout=0.2)
        with run_palaver([strict]) as url:
            a.behave(chunk_delay=0.6)
            events = _sse(url)
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_timeout"
    assert events[-1] == b"data: [DONE]"


def test_chunk_timeout_bounds_each_gap_however_long_the_stream() -> None:
    """A stream several times as long as chunk_timeout, its chunks closer than that, comes
    whole; one that then stalls ends with an error event about chunk_timeout later."""
    words = " ".join(f"w{i}" for i in range(12))
    body = {"model": "m", "messages": [{"role": "user", "content": words}], "stream": True}
    with run_upstream("a") as a, run_palaver([provider_entry(a, chunk_timeout=0.4)]) as url:
        a.behave(chunk_delay=0.15)  # 14 chunks over ~2 s: five chunk_timeouts
        whole = _sse(url, body)
        a.behave(chunk_delay=0.15, stall_after=8)
        started = time.monotonic()
        cut = _sse(url, body)
        took = time.monotonic() - started
    assert whole[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in whole[:-1]]
    assert all("error" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == f"[a] {words}"
    error = orjson.loads(cut[-2].removeprefix(b"data: "))["error"]
    assert error["code"] == "upstream_timeout"
    assert cut[-1] == b"data: [DONE]"
    assert len(cut) == 8 + 2  # the chunks sent before the stall, the error, [DONE]
    assert 7 * 0.15 + 0.4 <= took < 7 * 0.15 + 1.2, took


def _sse(url: str, body: dict[str, Any] | None = None) -> list[bytes]:
    body = body or {"model": "m", "messages": USER, "stream": True}
    with httpx.Client(timeout=20) as http:
        response = http.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return [e for e in response.content.split(b"\n\n") if e]


# -- plain error messages (item 19) ---------------------------------------------------------


class _RawAnswer(socketserver.BaseRequestHandler):
    """Reads one request and answers with ``answer`` as raw bytes, then closes."""

    answer: ClassVar[bytes] = b""

    def handle(self) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            piece = self.request.recv(65536)
            if not piece:
                return
            data += piece
        head, _, body = data.partition(b"\r\n\r\n")
        match = re.search(rb"content-length: (\d+)", head.lower())
        length = int(match.group(1)) if match else 0
        while len(body) < length:
            body += self.request.recv(65536)
        self.request.sendall(self.answer)


@contextmanager
def _raw_upstream(answer: bytes) -> Iterator[dict[str, Any]]:
    handler = type("Handler", (_RawAnswer,), {"answer": answer})
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield {"name": "raw", "base_url": f"http://127.0.0.1:{port}/v1"}
    finally:
        server.shutdown()
        server.server_close()


def _error_of(url: str, stream: bool) -> tuple[int, dict[str, Any]]:
    """The error a request gets: a JSON error body, or a stream's error event."""
    body = {"model": "m", "messages": USER, "stream": stream}
    with httpx.Client(timeout=20) as http:
        response = http.post(url + "/v1/chat/completions", json=body)
    if response.status_code != 200:
        return response.status_code, response.json()["error"]
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    return 200, orjson.loads(events[-2].removeprefix(b"data: "))["error"]


CUT_BODY = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
    b'{"id": "x", "choices": ['
)
REFUSED = "Provider dead is unreachable: connection refused."
FAILED_500 = "Provider shared failed with status 500: shared says 500"
NOT_HTTP = b"hello, this is not HTTP\r\n\r\n"
EMPTY_STREAM = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 14\r\n\r\n"
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize(
    ("case", "stream", "status", "code", "message"),
    [
        ("refused", False, 502, "upstream_unreachable", REFUSED),
        ("refused", True, 502, "upstream_unreachable", REFUSED),
        ("not_json", False, 502, "upstream_malformed", "Provider shared sent a malformed answer."),
        ("not_json", True, 502, "upstream_malformed", "Provider shared sent a malformed answer."),
        ("cut_first", True, 502, "upstream_error", "Provider shared broke off its answer."),
        ("cut_later", True, 200, "upstream_error", "Provider shared broke off its stream."),
        ("stall", True, 200, "upstream_timeout", "Provider shared stalled in mid-stream."),
        ("hang", False, 504, "upstream_timeout", "Provider shared did not answer within 0.5 s."),
        ("status", False, 502, "upstream_error", FAILED_500),
        ("cut_body", False, 502, "upstream_error", "Provider raw broke off its answer mid-body."),
        ("not_http", False, 502, "upstream_malformed", "Provider raw sent a malformed answer."),
        ("not_http", True, 502, "upstream_malformed", "Provider raw sent a malformed answer."),
        ("empty", True, 502, "upstream_malformed", "Provider raw sent an empty stream."),
    ],
)  # fmt: skip
def test_errors_say_in_plain_words_which_provider_failed_and_how(
    shared: Upstream, case: str, stream: bool, status: int, code: str, message: str
) -> None:
    behaviours: dict[str, dict[str, Any]] = {
        "not_json": {"not_json": True},
        "cut_first": {"cut_after": 0},
        "cut_later": {"cut_after": 3},
        "stall": {"chunk_delay": 2.0},
        "hang": {"hang": True},
        "status": {"status": 500},
    }
    raw = {"cut_body": CUT_BODY, "not_http": NOT_HTTP, "empty": EMPTY_STREAM}
    with _raw_upstream(raw.get(case, b"")) as raw_entry:
        if case == "refused":
            entry = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
        elif case in raw:
            entry = raw_entry
        else:
            entry = provider_entry(shared, first_byte_timeout=0.5, chunk_timeout=0.5)
            shared.behave(**behaviours[case])
        with run_palaver([entry]) as url:
            got_status, error = _error_of(url, stream)
    # a 5xx body also names its request id, for the client to quote (CONTRACT §10)
    said = re.sub(r" \(request id req_[0-9a-f]{24}\)$", "", error["message"])
    assert (got_status, error["code"], said) == (status, code, message)
    assert set(error) == {"message", "type", "param", "code"}
    assert not LEAKS.search(error["message"]), error["message"]


def test_technical_detail_stays_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    with caplog.at_level(logging.WARNING), run_palaver([dead]) as url:
        status, _ = _error_of(url, stream=False)
    assert status == 502
    detail = [r.getMessage() for r in caplog.records if "dead" in r.getMessage()]
    assert any("refused" in line.lower() and "127.0.0.1" in line for line in detail), detail


# -- echo honours max_tokens (item 24a) -----------------------------------------------------


def test_echo_honours_max_tokens() -> None:
    with run_palaver() as url, _client(url) as client:
        whole = client.chat.completions.create(model="x", messages=WORDS, max_tokens=10)
        assert whole.choices[0].message.content == "one two three four five"
        assert whole.choices[0].finish_reason == "stop"
        cut = client.chat.completions.create(model="x", messages=WORDS, max_tokens=2)
        assert cut.choices[0].message.content == "one two"
        assert cut.choices[0].finish_reason == "length"
        assert cut.usage is not None
        assert (cut.usage.prompt_tokens, cut.usage.completion_tokens) == (5, 2)
        newer = client.chat.completions.create(
            model="x", messages=WORDS, max_completion_tokens=3, n=2
        )
        assert [c.message.content for c in newer.choices] == ["one two three"] * 2
        assert {c.finish_reason for c in newer.choices} == {"length"}
        assert newer.usage is not None
        assert newer.usage.completion_tokens == 6
        chunks = list(
            client.chat.completions.create(
                model="x",
                messages=WORDS,
                max_tokens=2,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"
    assert set(finishes[:-1]) == {None}
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == 2


# -- the model list and retrieve agree (items 24d, 24e) -------------------------------------


def test_model_list_and_retrieve_agree() -> None:
    with (
        run_upstream("a", models=["alpha-1", "alpha-2"]) as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a), provider_entry(b, ["beta-x"])]) as url,
        _client(url) as client,
    ):
        listed = {m.id: m.owned_by for m in client.models.list()}
        assert listed == {"alpha-1": "a", "alpha-2": "a", "beta-x": "b"}
        for name, owner in listed.items():
            assert client.models.retrieve(name).owned_by == owner
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("not-listed")
        assert caught.value.code == "model_not_found"


def test_echo_lists_itself_and_serves_any_name() -> None:
    with run_palaver() as url, _client(url) as client:
        assert [m.id for m in client.models.list()] == ["echo"]
        assert client.models.retrieve("gpt-4o").owned_by == "echo"


def test_unreachable_model_list_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    dead = {"name": "deadlist", "base_url": f"http://127.0.0.1:{free_port()}/v1"}
    with caplog.at_level(logging.WARNING), run_palaver([dead]) as url, _client(url) as client:
        for _ in range(3):
            assert list(client.models.list()) == []
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("anything")
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "deadlist" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert "model" in warnings[0]
