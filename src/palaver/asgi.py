"""Raw ASGI plumbing: types, JSON and SSE responses, bounded body reads, disconnect watching."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

from palaver.errors import PayloadTooLarge

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_TYPE = (b"content-type", b"application/json")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx and friends: do not buffer the stream
]


class ClientDisconnected(Exception):
    """The client went away before its answer was complete."""


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    head = [JSON_TYPE, (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def without_body(send: Send) -> Send:
    """``send`` for a HEAD request: the status and headers of the GET answer, no body (servers
    need not drop it themselves)."""

    async def send_head(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body"):
                return
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return send_head


def with_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` adding ``extra`` headers to the response's start."""
    if not extra:
        return send

    async def send_with(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return send_with


def header(scope: Scope, name: bytes) -> bytes | None:
    """A request header (lower-case name); the headers are indexed once per request."""
    indexed: dict[bytes, bytes] | None = scope.get("palaver.headers")
    if indexed is None:
        indexed = scope["palaver.headers"] = dict(scope["headers"])
    return indexed.get(name)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body; ``PayloadTooLarge`` as soon as it passes ``limit``."""
    declared = header(scope, b"content-length")
    too_large = PayloadTooLarge(f"The request body is larger than {limit} bytes.")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts = [body]
    size = len(body)
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    return b"".join(parts)


class CancelOnDisconnect:
    """``async with CancelOnDisconnect(receive):`` cancels its body when the client goes away,
    and raises ``ClientDisconnected`` in its place. Use it only once the body has been read.

    Most requests end within milliseconds, so the watcher task is started only if the body is
    still running after ``WATCH_AFTER`` seconds: a timer costs far less than a task.
    """

    WATCH_AFTER = 0.05

    __slots__ = ("_fired", "_receive", "_task", "_timer", "_watcher")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._fired = False
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._timer = asyncio.get_running_loop().call_later(self.WATCH_AFTER, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._fired = True
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._timer.cancel()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # Cancelled, its CancelledError's traceback holds the watch's frame and so this
            # object: were the task still referenced here, that would be a cycle, and the
            # request's whole state (uvicorn's cycle, its scope) would wait for a full
            # collection. At 1,024 connections against a 20 ms upstream every request is
            # watched, and that garbage was most of the worker's memory peak.
            watcher.cancel()
        if self._fired and exc_type is not None and issubclass(exc_type, asyncio.CancelledError):
            self._task.uncancel()
            raise ClientDisconnected
