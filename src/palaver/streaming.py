"""Server-sent events: parse an upstream's byte stream, encode chunks for the client."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterable
from typing import Any

import orjson

from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.protocol import Json, completion_id, now

DONE = b"data: [DONE]\n\n"


def encode_event(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def error_event(error: PalaverError) -> bytes:
    return b"data: " + error.to_json() + b"\n\n"


class EventParser:
    """Server-sent events, fed as they are read: ``feed`` returns the JSON objects of the
    ``data:`` events a piece completed, and whether ``[DONE]`` came (what follows it is
    ignored); ``end`` the last event, if the stream ended without a blank line after it.

    Bytes are split by hand rather than line by line so that one event may be of any size.
    Comments (``: keep-alive``) and ``event:``/``id:`` lines are skipped.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, piece: bytes) -> tuple[list[Json], bool]:
        buffer = self._buffer + piece if self._buffer else piece
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
                self._buffer = b""
                return batch, True
            batch.append(_decode(data))
        self._buffer = buffer
        return batch, False

    def end(self) -> list[Json]:
        data = _data_of(self._buffer)
        self._buffer = b""
        return [_decode(data)] if data is not None and data != b"[DONE]" else []


async def parse_events(chunks: AsyncIterable[bytes]) -> AsyncGenerator[list[Json], None]:
    """Yield, for each piece read, the JSON objects of the ``data:`` events it completed
    (``EventParser``); stop at ``[DONE]``. Events are batched by network read so that the
    relay writes them out together (one write, not one per event) while still passing each
    read on as soon as it arrives."""
    parser = EventParser()
    async for piece in chunks:
        batch, done = parser.feed(piece)
        if batch:
            yield batch
        if done:
            return
    last = parser.end()
    if last:
        yield last


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


def asking_usage(payload: Json) -> Json:
    """``payload`` asking the upstream for the usage chunk: palaver always wants it (for the
    metrics, the rate limits, the cached answer); clients that did not ask are not sent it."""
    options = payload.get("stream_options")
    options = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return {**payload, "stream_options": options}


class ChunkRelay:
    """An upstream stream's batches made into what a client is sent: each chunk normalized and
    encoded, the usage-only chunk kept aside (sent last, to the clients that asked for it),
    and the whole completion rebuilt as the chunks pass."""

    __slots__ = ("_normalize", "_whole", "usage_event")

    def __init__(self, model: str) -> None:
        self._normalize = ChunkNormalizer(model=model, include_usage=True)
        self._whole = CompletionAccumulator()
        self.usage_event: bytes | None = None

    def events(self, batch: list[Json]) -> list[bytes]:
        """The encoded chunks with choices of one batch, in order."""
        out: list[bytes] = []
        for chunk in batch:
            normalized = self._normalize(chunk)
            if normalized is None:
                continue
            self._whole.add(normalized)
            if normalized["choices"]:
                out.append(encode_event(normalized))
            else:
                self.usage_event = encode_event(normalized)
        return out

    def completion(self) -> Json:
        """The whole completion, once the stream ended; raises if it ended before every
        choice finished."""
        if not self._normalize.complete:
            raise UpstreamUnreachable("The upstream stream ended before its last chunk.")
        return self._whole.completion()


class _Choice:
    __slots__ = ("finish_reason", "logprobs", "text", "tool_calls")

    def __init__(self) -> None:
        self.text: dict[str, list[str]] = {}  # content, refusal, reasoning_content, ...
        self.tool_calls: dict[int, Json] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add(self, choice: Json) -> None:
        delta = choice.get("delta") or {}
        for key, value in delta.items():
            if key == "tool_calls":
                for call in value or ():
                    self._add_call(call)
            elif key != "role" and isinstance(value, str) and value:
                self.text.setdefault(key, []).append(value)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            merged = self.logprobs if self.logprobs is not None else {}
            for key, values in logprobs.items():
                if isinstance(values, list):
                    merged.setdefault(key, []).extend(values)
            self.logprobs = merged

    def _add_call(self, call: Json) -> None:
        """A tool-call delta: function calls stream ``function.arguments``, custom ones
        ``custom.input``; names and payloads arrive in pieces."""
        index = call.get("index", 0)
        entry = self.tool_calls.get(index)
        if entry is None:
            kind = "custom" if call.get("type") == "custom" or "custom" in call else "function"
            payload = "input" if kind == "custom" else "arguments"
            entry = self.tool_calls[index] = {
                "id": "",
                "type": kind,
                kind: {"name": "", payload: ""},
            }
        if call.get("id"):
            entry["id"] = call["id"]
        kind = entry["type"]
        part = call.get(kind) or {}
        body = entry[kind]
        for key, value in part.items():
            if isinstance(value, str) and value:
                body[key] = body.get(key, "") + value

    def message(self) -> Json:
        text = {key: "".join(parts) for key, parts in self.text.items()}
        content = text.pop("content", None)
        message: Json = {
            "role": "assistant",
            "content": content if content is not None or self.tool_calls else "",
            "refusal": text.pop("refusal", None),
        }
        message.update(text)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return message


class CompletionAccumulator:
    """Rebuilds the whole ``chat.completion`` a stream carried: every choice's text, tool calls,
    refusal, finish reason and logprobs, and the usage."""

    __slots__ = ("_choices", "_head", "_usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._head: Json | None = None
        self._usage: Json | None = None

    def add(self, chunk: Json) -> None:
        if self._head is None:
            self._head = chunk
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            found = self._choices.get(index)
            if found is None:
                found = self._choices[index] = _Choice()
            found.add(choice)

    def message(self, index: int = 0) -> Json:
        found = self._choices.get(index)
        return found.message() if found is not None else {"role": "assistant", "content": ""}

    def completion(self) -> Json:
        head = self._head or {}
        completion: Json = {
            "id": head.get("id") or completion_id(),
            "object": "chat.completion",
            "created": head.get("created") or now(),
            "model": head.get("model"),
            "choices": [
                {
                    "index": index,
                    "message": choice.message(),
                    "logprobs": choice.logprobs,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in sorted(self._choices.items())
            ],
            "usage": self._usage,
        }
        for key in ("system_fingerprint", "service_tier"):
            if head.get(key) is not None:
                completion[key] = head[key]
        return completion


_PIECES = re.compile(r"\s*\S+\s*|\s+")


def replay_chunks(completion: Json, include_usage: bool) -> list[Json]:
    """A stored completion as a proper stream: per choice a role chunk, its content in
    several chunks, its tool calls, a final chunk; then usage if asked. A fresh id."""
    base: Json = {
        "id": completion_id(),
        "object": "chat.completion.chunk",
        "created": now(),
        "model": completion.get("model"),
    }
    for key in ("system_fingerprint", "service_tier"):
        if completion.get(key) is not None:
            base[key] = completion[key]
    chunks: list[Json] = []

    def emit(index: int, delta: Json, finish: str | None = None, logprobs: Any = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        chunks.append({**base, "choices": [choice]})

    for choice in completion.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        emit(index, {"role": "assistant", "content": ""})
        for key, value in message.items():
            if key not in ("role", "content", "refusal", "tool_calls") and isinstance(value, str):
                emit(index, {key: value})  # reasoning_content and the like
        content = message.get("content")
        if isinstance(content, str):
            for piece in _PIECES.findall(content):
                emit(index, {"content": piece})
        if message.get("refusal"):
            emit(index, {"refusal": message["refusal"]})
        for position, call in enumerate(message.get("tool_calls") or ()):
            kind = "custom" if call.get("type") == "custom" else "function"
            payload = "input" if kind == "custom" else "arguments"
            body = call.get(kind) or {}
            head = {
                "index": position,
                "id": call.get("id"),
                "type": kind,
                kind: {"name": body.get("name", ""), payload: ""},
            }
            emit(index, {"tool_calls": [head]})
            text = str(body.get(payload, ""))
            half = len(text) // 2
            for piece in (text[:half], text[half:]):
                if piece:
                    emit(index, {"tool_calls": [{"index": position, kind: {payload: piece}}]})
        emit(index, {}, choice.get("finish_reason") or "stop", choice.get("logprobs"))
    if include_usage and completion.get("usage"):
        chunks.append({**base, "choices": [], "usage": completion["usage"]})
    return chunks
