"""``/v1/responses``: the OpenAI Responses API over the chat pipeline.

POST   /v1/responses                         create (streaming or not)
GET    /v1/responses/{id}                    a stored response
DELETE /v1/responses/{id}                    delete it
GET    /v1/responses/{id}/input_items        its input items (limit, after, order: desc)
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial

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
from palaver.conversations.routes import paginate, query_of
from palaver.errors import NotFound, PalaverError, ShuttingDown
from palaver.limits import key_of, pass_of
from palaver.observability import note_model
from palaver.protocol import ChatRequest, StreamOptions
from palaver.responses.events import EventStream
from palaver.responses.request import parse_response_request
from palaver.responses.stage import Responses, ResponseTurn
from palaver.responses.store import StoredResponse
from palaver.routes import check_json, relay
from palaver.server import Drain
from palaver.service import ChatCall, ChatService

Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]


def not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")


def _error_code(error: dict[str, object]) -> str:
    return "rate_limit_exceeded" if error.get("code") == "rate_limit_exceeded" else "server_error"


class ResponseHandlers:
    def __init__(
        self, service: ChatService, responses: Responses, max_body: int, drain: Drain
    ) -> None:
        self._service = service
        self._responses = responses
        self._max_body = max_body
        self._drain = drain

    def routes(self, rest: list[str]) -> dict[str, Handler] | None:
        """The handlers by method for the path segments after ``/responses``."""
        if not rest:
            return {"POST": self.create}
        response_id = rest[0]
        if len(rest) == 1:
            return {
                "GET": partial(self._retrieve, response_id=response_id),
                "DELETE": partial(self._delete, response_id=response_id),
            }
        if len(rest) == 2 and rest[1] == "input_items":
            return {"GET": partial(self._input_items, response_id=response_id)}
        return None

    async def create(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        check_json(scope)
        translation = parse_response_request(await read_body(scope, receive, self._max_body))
        note_model(translation.request.model)
        key_of(scope).check_model(translation.request.model)
        admitted = pass_of(scope)
        turn = self._responses.turn(tenant, translation)
        streaming = bool(translation.request.stream)
        request = ChatRequest(
            model=translation.request.model,
            messages=[],
            stream=streaming,
            stream_options=StreamOptions(include_usage=True) if streaming else None,
        )
        call = ChatCall(
            request,
            translation.payload,
            tenant,
            cache_control=header(scope, b"cache-control"),
            state=turn,
            on_usage=None if admitted is None else admitted.record,
        )
        if not streaming:
            async with CancelOnDisconnect(receive):
                reply = await self._service.complete(call)
            assert turn.response is not None
            await send_json(send, 200, orjson.dumps(turn.response), reply.headers)
            return
        turn.stream = events = EventStream(turn.base)
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
                await relay(
                    _translated(turn, events, stream.events),
                    send,
                    self._drain,
                    partial(_last_words, events),
                )
            finally:
                await stream.events.aclose()

    async def _load(self, response_id: str, tenant: str) -> StoredResponse:
        record = await self._responses.store.get(response_id, tenant)
        if record is None:
            raise not_found(response_id)
        return record

    async def _retrieve(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, response_id: str
    ) -> None:
        record = await self._load(response_id, tenant)
        await send_json(send, 200, orjson.dumps(record.response))

    async def _delete(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, response_id: str
    ) -> None:
        if not await self._responses.store.delete(response_id, tenant):
            raise not_found(response_id)
        body = {"id": response_id, "object": "response", "deleted": True}
        await send_json(send, 200, orjson.dumps(body))

    async def _input_items(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, response_id: str
    ) -> None:
        record = await self._load(response_id, tenant)
        page = paginate(record.input_items, query_of(scope), "desc", "this response's input")
        await send_json(send, 200, orjson.dumps(page))


def _last_words(events: EventStream, error: ShuttingDown) -> bytes:
    return events.fail(error.message)


async def _translated(
    turn: ResponseTurn, events: EventStream, chat: AsyncGenerator[bytes, None]
) -> AsyncGenerator[bytes, None]:
    """The chat stream's bytes as Responses events; the end is ``response.completed`` (the
    turn stored by then) or ``response.failed``."""
    yield events.start()
    try:
        async for data in chat:
            out = events.feed(data)
            if out:
                yield out
    except PalaverError as exc:
        yield events.fail(exc.message)
        return
    finally:
        await chat.aclose()
    if events.failed is not None:
        message = events.failed.get("message")
        text = message if isinstance(message, str) else "The response failed."
        yield events.fail(text, _error_code(events.failed))
    elif turn.response is not None:
        yield events.completed(turn.response)
    else:
        yield events.fail("The stream ended before the response was complete.")
