"""The chat request pipeline.

    auth (app) -> conversation -> priority -> cache -> provider -> store

Each stage has its place here; the handlers in ``routes`` only turn HTTP into a ``ChatCall``
and a result back into HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from palaver.conversations import Conversations, Turn, reply_message
from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.priority import arrange
from palaver.protocol import ChatRequest, Json, Message
from palaver.providers import ChunkStream, ProviderRouter
from palaver.streaming import (
    DONE,
    ChunkNormalizer,
    ReplyAccumulator,
    encode_event,
    error_event,
)

log = logging.getLogger("palaver.service")

Headers = list[tuple[bytes, bytes]]
Finish = Callable[[Message], Awaitable[None]]


@dataclass(slots=True)
class ChatCall:
    """One chat request as it travels the pipeline."""

    request: ChatRequest
    payload: Json  # what goes upstream: the client's JSON less palaver's extension fields
    tenant: str  # who is asking ("" when palaver runs without API keys)
    conversation_header: bytes | None = None  # X-Conversation-Id, as sent


@dataclass(slots=True)
class ChatReply:
    body: Json
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ChatStream:
    """A stream whose first upstream chunk has arrived: ``events`` yields SSE bytes."""

    events: AsyncGenerator[bytes, None]
    headers: Headers = field(default_factory=list)


class ChatService:
    def __init__(self, router: ProviderRouter, conversations: Conversations) -> None:
        self._router = router
        self._conversations = conversations

    async def _begin(self, call: ChatCall) -> Turn | None:
        turn = await self._conversations.begin(
            call.tenant, call.request.conversation, call.conversation_header, call.payload
        )
        if turn is None:
            call.payload["messages"] = arrange(call.payload["messages"])
        return turn

    async def complete(self, call: ChatCall) -> ChatReply:
        turn = await self._begin(call)
        body = await self._router.complete(call.request.model, call.payload)
        if turn is None:
            return ChatReply(body)
        choices = body["choices"]
        first = choices[0] if choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        if isinstance(message, dict):
            await self._conversations.commit(turn, reply_message(message))
        body["conversation"] = turn.conversation_id
        return ChatReply(body, [(b"x-conversation-id", turn.conversation_id.encode())])

    async def stream(self, call: ChatCall) -> ChatStream:
        turn = await self._begin(call)
        upstream = await self._router.open_stream(call.request.model, call.payload)
        options = call.request.stream_options
        normalize = ChunkNormalizer(
            model=call.request.model,
            include_usage=bool(options is not None and options.include_usage),
        )
        if turn is None:
            return ChatStream(_relay(upstream, normalize, None))
        conversations = self._conversations

        async def finish(reply: Message) -> None:
            await conversations.commit(turn, reply_message(reply))

        headers = [(b"x-conversation-id", turn.conversation_id.encode())]
        return ChatStream(_relay(upstream, normalize, finish), headers)


async def _relay(
    upstream: ChunkStream, normalize: ChunkNormalizer, finish: Finish | None
) -> AsyncGenerator[bytes, None]:
    """Relay chunks; a failure after the first one ends the stream with an error event.
    ``finish`` gets the reply once the stream is complete, before ``[DONE]``."""
    reply = ReplyAccumulator() if finish is not None else None
    try:
        async for batch in upstream:
            events = []
            for chunk in batch:
                out = normalize(chunk)
                if out is not None:
                    if reply is not None:
                        reply.add(out)
                    events.append(encode_event(out))
            if events:
                yield events[0] if len(events) == 1 else b"".join(events)
        if not normalize.complete:
            raise UpstreamUnreachable("The upstream stream ended before its last chunk.")
        if finish is not None and reply is not None:
            await finish(reply.message())
    except PalaverError as exc:
        log.warning("stream failed: %s", exc.message)
        yield error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield error_event(PalaverError("The server failed while streaming."))
    finally:
        await upstream.aclose()
    yield DONE
