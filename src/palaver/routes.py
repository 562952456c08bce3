"""Thin HTTP handlers: request in, ``ChatCall`` through the service, JSON or SSE out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from urllib.parse import unquote

import orjson

from palaver.asgi import (
    SSE_HEADERS,
    CancelOnDisconnect,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)
from palaver.errors import MethodNotAllowed, NotFound, ShuttingDown, UnsupportedMediaType
from palaver.limits import key_of, pass_of
from palaver.observability import note_model
from palaver.protocol import model_list, parse_chat_request
from palaver.providers import ProviderRouter
from palaver.server import Drain
from palaver.service import ChatCall, ChatService
from palaver.streaming import DONE, error_event

log = logging.getLogger("palaver")

HEALTH_BODY = orjson.dumps({"status": "ok"})
LAST_WORDS_SECONDS = 1.0  # a client that does not read cannot hold up a stop for longer


def check_json(scope: Scope) -> None:
    content_type = header(scope, b"content-type")
    if content_type is None:
        return
    media = content_type.split(b";", 1)[0].strip().lower()
    if media != b"application/json" and not media.endswith(b"+json"):
        raise UnsupportedMediaType(
            "The request body must be JSON, sent with 'Content-Type: application/json'."
        )


def _chat_last_words(error: ShuttingDown) -> bytes:
    return error_event(error) + DONE


async def relay(
    events: AsyncIterator[bytes],
    send: Send,
    drain: Drain,
    last_words: Callable[[ShuttingDown], bytes] = _chat_last_words,
) -> None:
    """Relay a stream's events. When palaver stops, the drain cuts it after the grace
    period: the upstream request is cancelled (closing the generator does it), nothing is
    stored, and the client gets ``last_words`` (an error event and ``[DONE]``)."""
    try:
        with drain.stream():
            async for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
    except ShuttingDown as exc:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
        try:
            async with asyncio.timeout(LAST_WORDS_SECONDS):
                last = last_words(exc)
                await send({"type": "http.response.body", "body": last, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except TimeoutError:
            log.info("stopping: a client did not read the end of its stream")
        return
    await send({"type": "http.response.body", "body": b""})


class Handlers:
    def __init__(
        self, service: ChatService, router: ProviderRouter, max_body: int, drain: Drain
    ) -> None:
        self._service = service
        self._router = router
        self._max_body = max_body
        self._drain = drain

    async def chat(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        check_json(scope)
        body = await read_body(scope, receive, self._max_body)
        request, payload = parse_chat_request(body)
        note_model(request.model)
        key_of(scope).check_model(request.model)
        admitted = pass_of(scope)
        call = ChatCall(
            request,
            payload,
            tenant,
            header(scope, b"x-conversation-id"),
            header(scope, b"cache-control"),
            on_usage=None if admitted is None else admitted.record,
        )
        if not request.stream:
            async with CancelOnDisconnect(receive):
                reply = await self._service.complete(call)
            await send_json(send, 200, orjson.dumps(reply.body), reply.headers)
            return
        async with CancelOnDisconnect(receive):
            stream = await self._service.stream(call)
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": SSE_HEADERS + stream.headers,
                    }
                )
                await relay(stream.events, send, self._drain)
            finally:
                await stream.events.aclose()

    async def models(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        key = key_of(scope)
        models = [(m, owner) for m, owner in await self._router.list_models() if key.allows(m)]
        await send_json(send, 200, orjson.dumps(model_list(models)))

    async def model(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        """``GET /v1/models/{model}``: the model object, if some provider serves the name."""
        if scope["method"] != "GET":
            raise MethodNotAllowed(f"Method {scope['method']} is not allowed on {scope['path']}.")
        name = unquote(scope["path"].split("/models/", 1)[1])
        owner = await self._router.listed_owner(name) if name else None
        if not key_of(scope).allows(name):
            owner = None  # a key sees only the models it may use
        if owner is None:
            raise NotFound(
                f"The model '{name}' does not exist or no provider serves it.",
                param="model",
                code="model_not_found",
            )
        body = {"id": name, "object": "model", "created": 0, "owned_by": owner}
        await send_json(send, 200, orjson.dumps(body))

    async def health(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        await send_json(send, 200, HEALTH_BODY)
