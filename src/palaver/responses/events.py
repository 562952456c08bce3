"""A chat completion stream as Responses API events.

``EventStream`` reads the chat chunks the pipeline relays (SSE bytes: live, from another
process, or replayed from the cache) and writes the events OpenAI sends for the same answer:
``response.created``, ``response.in_progress``, per output item ``output_item.added``, its
content part or argument deltas and their ``.done`` events, ``output_item.done``, and at the end
``response.completed`` (or ``response.incomplete``); an error after the start is
``response.failed``. Every event has its ``sequence_number``; output indexes count from 0 in
the order the items start.
"""

from __future__ import annotations

from typing import Any

import orjson

from palaver.protocol import Json
from palaver.responses.output import call_item, message_item, message_item_id, text_part


def encode(event: Json) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class _Part:
    __slots__ = ("index", "kind", "logprobs", "pieces")

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind  # "output_text" or "refusal"
        self.index = index
        self.pieces: list[str] = []
        self.logprobs: list[Any] = []

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def value(self) -> Json:
        if self.kind == "refusal":
            return {"type": "refusal", "refusal": self.text}
        return text_part(self.text, self.logprobs)


class _Item:
    __slots__ = ("call", "done", "index", "parts")

    def __init__(self, index: int, call: Json | None = None) -> None:
        self.index = index
        self.call = call  # a tool call being assembled; None for the message
        self.parts: dict[str, _Part] = {}
        self.done = False


class EventStream:
    """Translates one stream; ``output`` is what it produced, laid out as it was announced."""

    def __init__(self, base: Json) -> None:
        self._base = base  # the response skeleton (status in_progress)
        self._sequence = 0
        self._items: list[_Item] = []
        self._message: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._buffer = b""
        self.finish_reason: str | None = None
        self.usage: Json | None = None
        self.failed: Json | None = None  # the chat error body, if the stream failed
        self.ended = False  # [DONE] was read

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        return encode(event)

    @property
    def response_id(self) -> str:
        return str(self._base["id"])

    def start(self) -> bytes:
        return self._event("response.created", response=self._base) + self._event(
            "response.in_progress", response=self._base
        )

    # -- reading the chat stream -------------------------------------------------------------

    def feed(self, data: bytes) -> bytes:
        """The events for a piece of the chat stream (any number of whole or partial events)."""
        self._buffer += data
        out: list[bytes] = []
        while not self.ended:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            if not block.startswith(b"data: "):
                continue
            body = block[6:]
            if body == b"[DONE]":
                self.ended = True
                break
            chunk = orjson.loads(body)
            if "error" in chunk and "choices" not in chunk:
                self.failed = chunk["error"] if isinstance(chunk["error"], dict) else {}
                continue
            out.append(self._chunk(chunk))
        return b"".join(out)

    def _chunk(self, chunk: Json) -> bytes:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # a response has one answer (n is not a Responses parameter)
            delta = choice.get("delta") or {}
            logprobs = choice.get("logprobs")
            tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(self._text("output_text", content, tokens or []))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out.append(self._text("refusal", refusal, []))
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    out.append(self._call(call))
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _open_message(self) -> tuple[_Item, bytes]:
        item = self._message
        if item is not None:
            return item, b""
        item = self._message = _Item(len(self._items))
        self._items.append(item)
        added = message_item(self.response_id, [], status="in_progress")
        return item, self._event("response.output_item.added", output_index=item.index, item=added)

    def _text(self, kind: str, piece: str, tokens: list[Any]) -> bytes:
        item, out = self._open_message()
        item_id = message_item_id(self.response_id)
        part = item.parts.get(kind)
        if part is None:
            part = item.parts[kind] = _Part(kind, len(item.parts))
            out += self._event(
                "response.content_part.added",
                item_id=item_id,
                output_index=item.index,
                content_index=part.index,
                part=_Part(kind, part.index).value(),
            )
        part.pieces.append(piece)
        part.logprobs.extend(tokens)
        where = {"item_id": item_id, "output_index": item.index, "content_index": part.index}
        if kind == "refusal":
            return out + self._event("response.refusal.delta", **where, delta=piece)
        return out + self._event(
            "response.output_text.delta", **where, delta=piece, logprobs=tokens
        )

    def _call(self, delta: Json) -> bytes:
        index = delta.get("index", 0)
        item = self._calls.get(index)
        kind = "custom" if delta.get("type") == "custom" or "custom" in delta else "function"
        body = delta.get(kind) or {}
        out = b""
        if item is None:
            payload = "input" if kind == "custom" else "arguments"
            call: Json = {
                "id": delta.get("id") or "",
                "type": kind,
                kind: {"name": body.get("name") or "", payload: ""},
            }
            item = self._calls[index] = _Item(len(self._items), call)
            self._items.append(item)
            added = call_item(self.response_id, index, call, status="in_progress")
            out = self._event("response.output_item.added", output_index=item.index, item=added)
        else:
            assert item.call is not None
            call = item.call
            if delta.get("id") and not call["id"]:
                call["id"] = delta["id"]
            if body.get("name") and not call[kind]["name"]:
                call[kind]["name"] = body["name"]
        payload = "input" if call["type"] == "custom" else "arguments"
        piece = body.get(payload)
        if isinstance(piece, str) and piece:
            call[call["type"]][payload] += piece
            item_id = call_item(self.response_id, index, call)["id"]
            name = (
                "response.custom_tool_call_input.delta"
                if call["type"] == "custom"
                else "response.function_call_arguments.delta"
            )
            out += self._event(name, item_id=item_id, output_index=item.index, delta=piece)
        return out

    # -- the end ---------------------------------------------------------------------------

    def output(self, status: str = "completed") -> list[Json]:
        """The output items as the stream laid them out."""
        items: list[Json] = []
        for item in self._items:
            if item.call is None:
                parts = sorted(item.parts.values(), key=lambda p: p.index)
                items.append(message_item(self.response_id, [p.value() for p in parts], status))
            else:
                index = next(i for i, it in self._calls.items() if it is item)
                items.append(call_item(self.response_id, index, item.call, status))
        return items

    def close(self, status: str = "completed") -> bytes:
        """The ``.done`` events of every item, in order."""
        out: list[bytes] = []
        final = self.output(status)
        for item, value in zip(self._items, final, strict=True):
            if item.done:
                continue
            item.done = True
            if item.call is None:
                for part in sorted(item.parts.values(), key=lambda p: p.index):
                    where = {
                        "item_id": value["id"],
                        "output_index": item.index,
                        "content_index": part.index,
                    }
                    if part.kind == "refusal":
                        out.append(self._event("response.refusal.done", **where, refusal=part.text))
                    else:
                        out.append(
                            self._event(
                                "response.output_text.done",
                                **where,
                                text=part.text,
                                logprobs=part.logprobs,
                            )
                        )
                    out.append(
                        self._event("response.content_part.done", **where, part=part.value())
                    )
            elif value["type"] == "custom_tool_call":
                out.append(
                    self._event(
                        "response.custom_tool_call_input.done",
                        item_id=value["id"],
                        output_index=item.index,
                        input=value["input"],
                    )
                )
            else:
                out.append(
                    self._event(
                        "response.function_call_arguments.done",
                        item_id=value["id"],
                        output_index=item.index,
                        name=value["name"],
                        arguments=value["arguments"],
                    )
                )
            out.append(
                self._event("response.output_item.done", output_index=item.index, item=value)
            )
        return b"".join(out)

    def completed(self, response: Json) -> bytes:
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return self.close(response["status"]) + self._event(kind, response=response)

    def fail(self, message: str, code: str = "server_error") -> bytes:
        response = {
            **self._base,
            "status": "failed",
            "error": {"code": code, "message": message},
            "output": self.output("incomplete"),
        }
        return self._event("response.failed", response=response)
