"""The chat request pipeline.

    auth (app) -> conversation -> priority -> cache -> provider -> store

Each stage has its place here; the handlers in ``routes`` only turn HTTP into a ``ChatCall``
and a result back into HTTP.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.protocol import ChatRequest, Json
from palaver.providers import ChunkStream, ProviderRouter
from palaver.streaming import DONE, ChunkNormalizer, encode_event, error_event

log = logging.getLogger("palaver.service")

Headers = list[tuple[bytes, bytes]]


@dataclass(slots=True)
class ChatCall:
    """One chat request as it travels the pipeline."""

    request: ChatRequest
    payload: Json  # what goes upstream: the client's JSON less palaver's extension fields
    tenant: str  # who is asking ("" when palaver runs without API keys)


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
    def __init__(self, router: ProviderRouter) -> None:
        self._router = router

    async def complete(self, call: ChatCall) -> ChatReply:
        body = await self._router.complete(call.request.model, call.payload)
        return ChatReply(body)

    async def stream(self, call: ChatCall) -> ChatStream:
        upstream = await self._router.open_stream(call.request.model, call.payload)
        options = call.request.stream_options
        normalize = ChunkNormalizer(
            model=call.request.model,
            include_usage=bool(options is not None and options.include_usage),
        )
        return ChatStream(_relay(upstream, normalize))


async def _relay(upstream: ChunkStream, normalize: ChunkNormalizer) -> AsyncGenerator[bytes, None]:
    """Relay chunks; a failure after the first one ends the stream with an error event."""
    try:
        async for batch in upstream:
            events = [encode_event(out) for chunk in batch if (out := normalize(chunk))]
            if events:
                yield events[0] if len(events) == 1 else b"".join(events)
        if not normalize.complete:
            raise UpstreamUnreachable("The upstream stream ended before its last chunk.")
    except PalaverError as exc:
        log.warning("stream failed: %s", exc.message)
        yield error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield error_event(PalaverError("The server failed while streaming."))
    finally:
        await upstream.aclose()
    yield DONE
