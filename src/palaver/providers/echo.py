"""The built-in ``echo`` model: answers with the text of the last user message.

It lets palaver run, and be tried, with no provider at all. A word is a token: ``max_tokens``
(or ``max_completion_tokens``) cuts the answer after that many words, with
``finish_reason: "length"``, and the usage counts words. It serves any model name.
Its embeddings are deterministic unit vectors drawn from a hash of each input (the same text,
the same vector; ``dimensions`` long, ``ECHO_DIMENSIONS`` by default).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from collections.abc import AsyncGenerator
from typing import Any

from palaver.protocol import Json, completion_id, now, text_of

_WORDS = re.compile(r"\s*\S+\s*")
ECHO_DIMENSIONS = 1536  # as text-embedding-3-small's


def embedding_of(value: str | list[int], dimensions: int) -> list[float]:
    """A unit vector that depends on ``value`` only: float32 values, as a model's are."""
    material = value.encode() if isinstance(value, str) else struct.pack(f"<{len(value)}q", *value)
    raw = hashlib.shake_256(b"palaver-echo\0" + material).digest(4 * dimensions)
    numbers = [n / 2**31 - 1.0 for n in struct.unpack(f"<{dimensions}I", raw)]
    norm = math.sqrt(sum(n * n for n in numbers)) or 1.0
    unit = struct.pack(f"<{dimensions}f", *(n / norm for n in numbers))
    return list(struct.unpack(f"<{dimensions}f", unit))


def _inputs(value: Any) -> list[str | list[int]]:
    """A request's ``input`` as a list of texts or token lists (validated before)."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]
    return list(value)


def _embeddings(payload: Json) -> Json:
    dimensions = payload.get("dimensions") or ECHO_DIMENSIONS
    as_base64 = payload.get("encoding_format") == "base64"
    data: list[Json] = []
    tokens = 0
    for index, value in enumerate(_inputs(payload.get("input"))):
        vector = embedding_of(value, dimensions)
        tokens += len(value.split()) if isinstance(value, str) else len(value)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": payload["model"], "usage": usage}


def _reply(payload: Json) -> tuple[str, str]:
    """The answer's text and finish reason: the last user message, cut at the token limit."""
    text = ""
    for message in reversed(payload.get("messages", ())):
        if message.get("role") == "user":
            text = text_of(message.get("content"))
            break
    limits = [
        value
        for value in (payload.get("max_tokens"), payload.get("max_completion_tokens"))
        if isinstance(value, int) and value > 0
    ]
    if limits:
        words = _WORDS.findall(text)
        if len(words) > min(limits):
            return "".join(words[: min(limits)]).rstrip(), "length"
    return text, "stop"


def _usage(payload: Json, reply: str, n: int) -> Json:
    prompt = sum(len(text_of(m.get("content")).split()) for m in payload.get("messages", ()))
    completion = len(reply.split()) * n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _choices(payload: Json) -> int:
    n = payload.get("n")
    return n if isinstance(n, int) and n > 0 else 1


class EchoProvider:
    serves_any_model = True

    def __init__(self, name: str = "echo") -> None:
        self.name = name

    async def complete(self, payload: Json) -> Json:
        reply, finish = _reply(payload)
        n = _choices(payload)
        return {
            "id": completion_id(),
            "object": "chat.completion",
            "created": now(),
            "model": payload["model"],
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": reply, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for index in range(n)
            ],
            "usage": _usage(payload, reply, n),
        }

    async def open_stream(self, payload: Json) -> _EchoStream:
        return _EchoStream(payload)

    async def embed(self, payload: Json) -> Json:
        return _embeddings(payload)

    async def list_models(self) -> list[str]:
        return ["echo"]

    async def aclose(self) -> None:
        return None


class _EchoStream:
    def __init__(self, payload: Json) -> None:
        self._payload = payload

    async def __aiter__(self) -> AsyncGenerator[list[Json], None]:
        payload = self._payload
        reply, finish = _reply(payload)
        n = _choices(payload)
        base: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": now(),
            "model": payload["model"],
        }

        def chunk(index: int, delta: Json, finish: str | None = None) -> list[Json]:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return [{**base, "choices": [choice]}]

        for index in range(n):
            yield chunk(index, {"role": "assistant", "content": ""})
            for word in _WORDS.findall(reply):
                yield chunk(index, {"content": word})
            yield chunk(index, {}, finish)
        options = payload.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield [{**base, "choices": [], "usage": _usage(payload, reply, n)}]

    async def aclose(self) -> None:
        return None
