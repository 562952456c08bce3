"""A real OpenAI-compatible upstream for tests and benchmarks, served over loopback.

It answers ``POST /v1/chat/completions`` (streaming or not, ``n`` choices, tool calls when
tools are given, the usage chunk when asked) with ``[name] <last user text>``, and
``POST /v1/embeddings`` with small vectors that say what they embed; it records every
request, and can be told to misbehave: any status, 429 with Retry-After, hang, a slow first
byte, slow chunks, a connection cut mid-stream, a body that is not JSON. For client tool loops
it can answer in words once a tool result came back, and spell its tool-call arguments as told.

    python -m tests.upstream --port 9000     # run it alone (the benchmark does)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import struct
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

Scope = MutableMapping[str, Any]
Json = dict[str, Any]

_WORDS = re.compile(r"\s*\S+\s*")


class CutConnection(Exception):
    """Raised after the response started: the server drops the connection mid-stream."""


@dataclass
class Behaviour:
    status: int = 200
    error: Json | None = None
    retry_after: str | None = None
    hang: bool = False
    first_byte_delay: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None  # a stream sends this many chunks, then nothing
    not_json: bool = False
    times: int | None = None  # how many requests it applies to; None: all of them


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Json


@dataclass
class Upstream:
    name: str = "up"
    url: str = ""  # set once served
    models: list[str] = field(default_factory=lambda: ["up-model"])
    requests: list[Recorded] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    behaviour: Behaviour = field(default_factory=Behaviour)
    record: bool = True
    # Answer in words once a tool result is the last message, as real models do; client tool
    # loops (tests/clients) would otherwise call the tool until their step limit.
    answers_tool_results: bool = False
    # How the tool-call arguments are spelt (models differ: spaces, key order, escapes).
    tool_arguments: str = '{"city": "Paris"}'
    # Benchmarks: the model's name sets the pace, "wait-20ms" (answer after 20 ms) or
    # "stream-50x20ms" (50 content chunks, one every 20 ms); see ``_paced``.
    paced: bool = False

    # -- control ---------------------------------------------------------------------------

    def behave(self, **kwargs: Any) -> None:
        """Misbehave from now on (``times=N`` for the next N requests only)."""
        self.behaviour = Behaviour(**kwargs)

    def reset(self) -> None:
        self.behaviour = Behaviour()
        self.requests.clear()
        self.disconnects.clear()

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def embedding_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/embeddings")]

    def _take(self) -> Behaviour:
        behaviour = self.behaviour
        if behaviour.times is not None:
            behaviour.times -= 1
            if behaviour.times <= 0:
                self.behaviour = Behaviour()
        return behaviour

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if path.endswith("/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": self.name}
                for m in self.models
            ]
            await _json(send, 200, {"object": "list", "data": data})
            return
        payload = orjson.loads(body) if body else {}
        if self.paced and await _paced(self, payload, send):
            return
        if self.record:
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            self.requests.append(Recorded(scope["method"], path, headers, payload))
        behaviour = self._take()
        if behaviour.hang:
            await self._wait_disconnect(receive, None)
            return
        if behaviour.first_byte_delay and await self._wait_disconnect(
            receive, behaviour.first_byte_delay
        ):
            return
        if behaviour.status != 200:
            error = behaviour.error or {
                "error": {
                    "message": f"{self.name} says {behaviour.status}",
                    "type": "upstream_test_error",
                    "param": None,
                    "code": f"status_{behaviour.status}",
                }
            }
            extra = (
                [(b"retry-after", behaviour.retry_after.encode())] if behaviour.retry_after else []
            )
            await _json(send, behaviour.status, error, extra)
            return
        if behaviour.not_json:
            await _raw(send, 200, b"this is not JSON", b"application/json")
            return
        if path.endswith("/embeddings"):
            await _json(send, 200, self.embeddings(payload))
        elif payload.get("stream"):
            await self._stream(payload, behaviour, receive, send)
        else:
            await _json(send, 200, self.completion(payload))

    async def _wait_disconnect(self, receive: Any, seconds: float | None) -> bool:
        """Wait up to ``seconds`` (forever: None); True if the client went away meanwhile."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(disconnected(), seconds)
        except TimeoutError:
            return False
        self.disconnects.append(time.monotonic())
        return True

    # -- answers ---------------------------------------------------------------------------

    def embeddings(self, payload: Json) -> Json:
        """A vector per input: (the input's length, its index, 1, 1, ...), ``dimensions``
        long (3 by default); the answering upstream is named in ``model``."""
        value = payload.get("input")
        inputs = (
            [value] if isinstance(value, str) or (value and isinstance(value[0], int)) else value
        )
        dimensions = payload.get("dimensions") or 3
        data = []
        for index, item in enumerate(inputs or ()):
            vector = [float(len(item)), float(index), *[1.0] * dimensions][:dimensions]
            encoded: Any = vector
            if payload.get("encoding_format") == "base64":
                encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        tokens = sum(len(item) for item in inputs or ())
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        model = f"{payload.get('model')}@{self.name}"
        return {"object": "list", "data": data, "model": model, "usage": usage}

    def reply_text(self, payload: Json) -> str:
        """The answer; cut to ``max_completion_tokens`` (or ``max_tokens``) words if set."""
        text = f"[{self.name}]"
        for message in reversed(payload.get("messages", [])):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content)
                text = f"[{self.name}] {content}"
                break
        limit = _limit(payload)
        return text if limit is None else "".join(_WORDS.findall(text)[:limit])

    def finish_reason(self, payload: Json, calls: list[Json]) -> str:
        if calls:
            return "tool_calls"
        limit = _limit(payload)
        text = self.reply_text({**payload, "max_completion_tokens": None, "max_tokens": None})
        return "length" if limit is not None and len(_WORDS.findall(text)) > limit else "stop"

    def _tool_calls(self, payload: Json) -> list[Json]:
        tools = payload.get("tools") or []
        if payload.get("tool_choice") == "none":
            return []
        messages = payload.get("messages") or [{}]
        if self.answers_tool_results and messages[-1].get("role") == "tool":
            return []
        return [
            {
                "id": f"call_{index}",
                "type": "function",
                "function": {"name": tool["function"]["name"], "arguments": self.tool_arguments},
            }
            for index, tool in enumerate(tools[:2])
            if tool.get("type") == "function"
        ]

    def completion(self, payload: Json) -> Json:
        n = payload.get("n") or 1
        text = self.reply_text(payload)
        calls = self._tool_calls(payload)
        message: Json = {"role": "assistant", "content": None if calls else text}
        if calls:
            message["tool_calls"] = calls
        return {
            "id": "chatcmpl-upstream",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "?"),
            "choices": [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason(payload, calls),
                }
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
        }

    def chunks(self, payload: Json) -> Iterator[Json]:
        n = payload.get("n") or 1
        text = self.reply_text(payload)
        calls = self._tool_calls(payload)
        base = {
            "id": "chatcmpl-upstream-stream",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": payload.get("model", "?"),
        }

        def chunk(index: int, delta: Json, finish: str | None = None) -> Json:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        for i in range(n):
            yield chunk(i, {"role": "assistant", "content": ""})
        if calls:
            for i in range(n):
                for t, call in enumerate(calls):
                    head = {"index": t, "id": call["id"], "type": "function"}
                    head["function"] = {"name": call["function"]["name"], "arguments": ""}
                    yield chunk(i, {"tool_calls": [head]})
                    for piece in _pieces(call["function"]["arguments"], 3):
                        yield chunk(
                            i, {"tool_calls": [{"index": t, "function": {"arguments": piece}}]}
                        )
        else:
            for word in _WORDS.findall(text):
                for i in range(n):
                    yield chunk(i, {"content": word})
        for i in range(n):
            yield chunk(i, {}, self.finish_reason(payload, calls))
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
            yield {**base, "choices": [], "usage": usage}

    async def _stream(self, payload: Json, behaviour: Behaviour, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for count, chunk in enumerate(self.chunks(payload)):
            if behaviour.cut_after is not None and count >= behaviour.cut_after:
                raise CutConnection("cut mid-stream on purpose")
            if behaviour.stall_after is not None and count >= behaviour.stall_after:
                await self._wait_disconnect(receive, None)
                return
            if (
                count
                and behaviour.chunk_delay
                and await self._wait_disconnect(receive, behaviour.chunk_delay)
            ):
                return
            data = b"data: not json\n\n" if behaviour.not_json else _event(chunk)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


_PACE = re.compile(r"(?:wait-(\d+)ms|stream-(\d+)x(\d+)ms)")


async def _paced(upstream: Upstream, payload: Json, send: Any) -> bool:
    """Answer a benchmark's paced model (False if the model is not one): "wait-<ms>ms" after
    that long, "stream-<n>x<ms>ms" with n content chunks, one every ms, then the finish chunk
    and [DONE]. Each chunk is a real chat.completion.chunk, encoded once per stream."""
    match = _PACE.fullmatch(str(payload.get("model", "")))
    if match is None:
        return False
    wait, count, pace = match.groups()
    if wait is not None:
        await asyncio.sleep(int(wait) / 1000)
        await _json(send, 200, upstream.completion(payload))
        return True
    base = {"id": "chatcmpl-paced", "object": "chat.completion.chunk", "created": 0}
    base["model"] = payload["model"]

    def event(delta: Json, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _event({**base, "choices": [choice]})

    word = event({"content": "word "})
    headers = [(b"content-type", b"text/event-stream")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send(
        {"type": "http.response.body", "body": event({"role": "assistant"}), "more_body": True}
    )
    for _ in range(int(count)):
        await asyncio.sleep(int(pace) / 1000)
        await send({"type": "http.response.body", "body": word, "more_body": True})
    body = event({}, "stop") + b"data: [DONE]\n\n"
    await send({"type": "http.response.body", "body": body})
    return True


def _limit(payload: Json) -> int | None:
    limit = payload.get("max_completion_tokens") or payload.get("max_tokens")
    return limit if isinstance(limit, int) else None


def _pieces(text: str, count: int) -> list[str]:
    """``text`` cut into ``count`` pieces, as a model streams its tool-call arguments."""
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _event(obj: Json) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _raw(send: Any, status: int, body: bytes, ctype: bytes, extra: Any = ()) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Any, status: int, obj: Json, extra: Any = ()) -> None:
    await _raw(send, status, orjson.dumps(obj), b"application/json", extra)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="a fast OpenAI-compatible test upstream")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="up")
    args = parser.parse_args()
    app = Upstream(name=args.name, record=False, paced=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
