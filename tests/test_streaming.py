"""SSE parsing and chunk normalisation, as units."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from palaver.errors import UpstreamUnreachable
from palaver.protocol import Json
from palaver.streaming import (
    ChunkNormalizer,
    CompletionAccumulator,
    parse_events,
    replay_chunks,
)


async def _pieces(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(*parts: bytes) -> list[dict[str, object]]:
    return [event async for batch in parse_events(_pieces(*parts)) for event in batch]


async def test_events_split_anywhere_and_crlf() -> None:
    stream = (
        b': keep-alive\r\n\r\ndata: {"a": 1}\r\n\r\n'
        b'event: x\ndata: {"b":\ndata: 2}\n\ndata: [DONE]\n\n'
    )
    for cut in range(1, len(stream)):
        assert await _collect(stream[:cut], stream[cut:]) == [{"a": 1}, {"b": 2}]


async def test_stops_at_done_and_takes_a_last_event_without_blank_line() -> None:
    assert await _collect(b'data: {"a": 1}\n\ndata: [DONE]\n\ndata: {"b": 2}\n\n') == [{"a": 1}]
    assert await _collect(b'data: {"a": 1}') == [{"a": 1}]


async def test_large_event() -> None:
    big = b'{"c": "' + b"x" * 300_000 + b'"}'
    assert (await _collect(b"data: " + big[:1000], big[1000:] + b"\n\n"))[0]["c"] == "x" * 300_000


async def test_not_json_is_an_upstream_error() -> None:
    with pytest.raises(UpstreamUnreachable):
        await _collect(b"data: nope\n\n")


def test_normalizer_makes_chunks_conformant() -> None:
    normalize = ChunkNormalizer(model="m", include_usage=False)
    first = normalize({"id": "x", "created": 5, "choices": [{"delta": {"content": "a"}}]})
    assert first is not None
    assert first["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant", "content": "a"},
        "finish_reason": None,
    }
    assert first["object"] == "chat.completion.chunk"
    assert first["model"] == "m"
    second = normalize(
        {"id": "y", "created": 9, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    )
    assert second is not None
    assert (second["id"], second["created"]) == ("x", 5)
    assert "role" not in second["choices"][0]["delta"]
    assert normalize.complete
    assert normalize({"choices": [], "usage": {"total_tokens": 1}}) is None


def test_normalizer_keeps_usage_when_asked() -> None:
    normalize = ChunkNormalizer(model="m", include_usage=True)
    normalize({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    assert not normalize.complete
    usage = normalize({"choices": [], "usage": {"total_tokens": 1}})
    assert usage is not None
    assert usage["usage"] == {"total_tokens": 1}


def _accumulate(chunks: list[Json]) -> Json:
    whole = CompletionAccumulator()
    for chunk in chunks:
        whole.add(chunk)
    return whole.completion()


def test_tool_calls_of_both_kinds_survive_accumulation_and_replay() -> None:
    """A streamed custom tool call keeps its input (it is stored and sent upstream again)."""

    def chunk(call: Json) -> Json:
        choice = {"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}
        return {"id": "x", "choices": [choice]}

    chunks = [
        chunk({"index": 0, "id": "c1", "type": "custom", "custom": {"name": "shell"}}),
        chunk({"index": 0, "custom": {"input": "ls "}}),
        chunk({"index": 0, "custom": {"input": "-la"}}),
        chunk({"index": 1, "id": "c2", "type": "function", "function": {"name": "f"}}),
        chunk({"index": 1, "function": {"arguments": '{"a":'}}),
        chunk({"index": 1, "function": {"arguments": " 1}"}}),
        {"id": "x", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    calls = [
        {"id": "c1", "type": "custom", "custom": {"name": "shell", "input": "ls -la"}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
    ]
    completion = _accumulate(chunks)
    assert completion["choices"][0]["message"]["tool_calls"] == calls
    replayed = _accumulate(replay_chunks(completion, include_usage=False))
    assert replayed["choices"][0]["message"]["tool_calls"] == calls
