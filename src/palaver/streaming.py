"""Server-sent events: parse an upstream's byte stream, encode chunks for the client."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

import orjson

from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.protocol import Json, completion_id, now

DONE = b"data: [DONE]\n\n"


class StreamEnded(Exception):
    """The upstream sent ``[DONE]``."""


def encode_event(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(error: PalaverError) -> bytes:
    return b"data: " + error.to_json() + b"\n\n"


async def parse_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[list[Json], None]:
    """Yield, for each piece read, the JSON objects of the ``data:`` events it completed;
    stop at ``[DONE]``.

    Events are batched by network read so that the relay writes them out together (one write,
    not one per event) while still passing each read on as soon as it arrives. Bytes are split
    by hand rather than line by line so that one event may be of any size. Comments
    (``: keep-alive``) and ``event:``/``id:`` lines are skipped.
    """
    buffer = b""
    async for piece in chunks:
        buffer += piece
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        batch: list[Json] = []
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            block, buffer = buffer[:end], buffer[end + 2 :]
            data = _data_of(block)
            if data is None:
                continue
            if data == b"[DONE]":
                if batch:
                    yield batch
                return
            batch.append(_decode(data))
        if batch:
            yield batch
    data = _data_of(buffer)
    if data is not None and data != b"[DONE]":
        yield [_decode(data)]


def _data_of(block: bytes) -> bytes | None:
    if block.startswith(b"data:") and b"\n" not in block:
        return block[5:].strip()
    lines = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _decode(data: bytes) -> Json:
    try:
        obj: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamUnreachable("The upstream sent a stream event that is not JSON.") from None
    if not isinstance(obj, dict):
        raise UpstreamUnreachable("The upstream sent a stream event that is not an object.")
    return obj


class ChunkNormalizer:
    """Make relayed chunks conformant: one id/created/object for the whole stream, a role on
    the first delta of each choice, ``finish_reason`` present (null until the end), and the
    usage-only chunk passed on only when the client asked for it."""

    __slots__ = ("_created", "_finished", "_id", "_include_usage", "_model", "_seen")

    def __init__(self, *, model: str, include_usage: bool) -> None:
        self._id: str | None = None
        self._created: int = 0
        self._model = model
        self._include_usage = include_usage
        self._seen: set[int] = set()
        self._finished: set[int] = set()

    @property
    def complete(self) -> bool:
        """Every choice that started has finished."""
        return bool(self._seen) and self._seen <= self._finished

    def __call__(self, chunk: Json) -> Json | None:
        if self._id is None:
            self._id = chunk.get("id") or completion_id()
            created = chunk.get("created")
            self._created = created if isinstance(created, int) else now()
        chunk["id"] = self._id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self._created
        if not chunk.get("model"):
            chunk["model"] = self._model
        choices = chunk.get("choices")
        if not choices:
            if chunk.get("usage") is None:
                return None
            if not self._include_usage:
                return None
            chunk["choices"] = []
            return chunk
        for choice in choices:
            index = choice.setdefault("index", 0)
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            if index not in self._seen:
                self._seen.add(index)
                if "role" not in delta:
                    choice["delta"] = {"role": "assistant", **delta}
            if choice.setdefault("finish_reason", None) is not None:
                self._finished.add(index)
        return chunk


class ReplyAccumulator:
    """Rebuilds the first choice's assistant message from its deltas (text and tool calls)."""

    __slots__ = ("_content", "_refusal", "_tool_calls")

    def __init__(self) -> None:
        self._content: list[str] = []
        self._refusal: list[str] = []
        self._tool_calls: dict[int, Json] = {}

    def add(self, chunk: Json) -> None:
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self._content.append(delta["content"])
            if delta.get("refusal"):
                self._refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                entry = self._tool_calls.setdefault(
                    call.get("index", 0),
                    {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    entry["id"] = call["id"]
                function = call.get("function") or {}
                if function.get("name"):
                    entry["function"]["name"] += function["name"]
                if function.get("arguments"):
                    entry["function"]["arguments"] += function["arguments"]

    def message(self) -> Json:
        message: Json = {
            "role": "assistant",
            "content": "".join(self._content) if self._content or not self._tool_calls else None,
        }
        if self._tool_calls:
            message["tool_calls"] = [self._tool_calls[i] for i in sorted(self._tool_calls)]
        if self._refusal:
            message["refusal"] = "".join(self._refusal)
        return message
