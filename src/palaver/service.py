"""The chat request pipeline.

    auth (app) -> conversation -> priority -> cache -> provider -> store

Each stage has its place here; the handlers in ``routes`` only turn HTTP into a ``ChatCall``
and a result back into HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from palaver.cache import CacheBackend, CacheUnavailable, Policy, cache_key, policy_of
from palaver.cache.flights import Flight, Flights
from palaver.conversations import Conversations, Turn, reply_message
from palaver.conversations.priority import arrange
from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.observability import note_usage
from palaver.protocol import ChatRequest, Json, completion_id, now
from palaver.providers import ProviderRouter
from palaver.providers.base import ChunkStream
from palaver.streaming import (
    DONE,
    ChunkRelay,
    asking_usage,
    encode_event,
    error_event,
    replay_chunks,
)
from palaver.tokens import Budget, Budgets

log = logging.getLogger("palaver.service")
T = TypeVar("T")

Headers = list[tuple[bytes, bytes]]
Finish = Callable[[Json], Awaitable[bool]]  # stores a turn, given the completion
OnUsage = Callable[[object], Awaitable[None]]  # counts an answer's usage against its key

HIT = (b"x-cache", b"HIT")
MISS = (b"x-cache", b"MISS")
BYPASS = (b"x-cache", b"BYPASS")


class CallState(Protocol):
    """The conversation stage of a call that is not a plain chat request (a Responses
    request): ``begin`` puts the history into the payload, trimmed to the token budget, and
    returns what stores the turn; ``trimmed`` then says how many stored messages it left out."""

    trimmed: int

    async def begin(self, payload: Json, budget: Budget | None) -> Finish: ...


@dataclass(slots=True)
class ChatCall:
    """One chat request as it travels the pipeline."""

    request: ChatRequest
    payload: Json  # what goes upstream: the client's JSON less palaver's extension fields
    tenant: str  # who is asking ("" when palaver runs without API keys)
    conversation_header: bytes | None = None  # X-Conversation-Id, as sent
    cache_control: bytes | None = None  # Cache-Control, as sent
    state: CallState | None = None  # instead of the chat conversation stage
    on_usage: OnUsage | None = None  # the provider's usage of an answer made for this call

    @property
    def include_usage(self) -> bool:
        options = self.request.stream_options
        return bool(options is not None and options.include_usage)


@dataclass(slots=True)
class ChatReply:
    body: Json
    headers: Headers = field(default_factory=list)


@dataclass(slots=True)
class ChatStream:
    """A stream whose first chunk is ready: ``events`` yields SSE bytes."""

    events: AsyncGenerator[bytes, None]
    headers: Headers = field(default_factory=list)


def _fresh(completion: Json) -> Json:
    """A copy to hand out: its own id and time when it was not made for this request."""
    return {**completion, "id": completion_id(), "created": now()}


def _trimmed(count: int) -> tuple[bytes, bytes]:
    return (b"x-palaver-trimmed", str(count).encode())


def _first_message(completion: Json) -> Json | None:
    choices = completion.get("choices") or []
    first = choices[0] if choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return message if isinstance(message, dict) else None


class ChatService:
    def __init__(
        self,
        router: ProviderRouter,
        conversations: Conversations,
        cache: CacheBackend | None,
        budgets: Budgets | None = None,
    ) -> None:
        self._router = router
        self._conversations = conversations
        self._cache = cache
        self._budgets = budgets
        self._flights = Flights(router, cache)

    async def close(self) -> None:
        await self._flights.close()

    # -- stages ----------------------------------------------------------------------------

    async def _begin(self, call: ChatCall) -> tuple[Turn | None, Finish | None, Headers]:
        """The conversation and priority stages: the history into the payload, trimmed to
        the model's context window; the turn, if the request continues a chat conversation,
        what stores the answer, and the headers that say what was trimmed."""
        budgets = self._budgets
        stateless = (
            call.state is None
            and call.request.conversation is None
            and call.conversation_header is None
        )
        budget = (
            None
            if budgets is None
            else await budgets.open(call.request.model, call.payload, stateless)
        )
        if call.state is not None:
            finish = _settling(await call.state.begin(call.payload, budget))
            trimmed = call.state.trimmed
            return None, finish, [_trimmed(trimmed)] if trimmed else []
        turn = await self._conversations.begin(
            call.tenant, call.request.conversation, call.conversation_header, call.payload, budget
        )
        if turn is None:
            call.payload["messages"] = arrange(call.payload["messages"])
            if budget is not None:
                budget.check(call.payload["messages"], "messages")
            return None, None, []
        return turn, self._finisher(turn), [_trimmed(turn.trimmed)] if turn.trimmed else []

    def _policy(self, call: ChatCall) -> tuple[Policy, str] | None:
        if self._cache is None or not self._cache.available:
            return None
        policy = policy_of(call.cache_control)
        return None if policy is None else (policy, cache_key(call.tenant, call.payload))

    async def _lookup(self, call: ChatCall) -> tuple[tuple[Policy, str] | None, Json | None]:
        """The cache policy and key for this request, and a hit if there is one.
        A cache that cannot be reached means no cache (BYPASS)."""
        cached = self._policy(call)
        if cached is None or self._cache is None or not cached[0].lookup:
            return cached, None
        try:
            found = await self._cache.get(cached[1])
        except CacheUnavailable:
            return None, None
        return cached, None if found is None else _fresh(found)

    async def _board(
        self, call: ChatCall, streaming: bool, cached: tuple[Policy, str]
    ) -> tuple[Flight, bool]:
        """Join an identical flight (of this process, or led by another one), or start one.
        Returns the flight and whether this request leads it."""
        policy, key = cached
        return await self._flights.board(
            call.request.model,
            call.payload,
            streaming=streaming,
            share=key if policy.lookup else None,
            store=key if policy.store else None,
        )

    def _finisher(self, turn: Turn | None) -> Finish | None:
        if turn is None:
            return None
        conversations = self._conversations

        async def finish(completion: Json) -> bool:
            message = _first_message(completion)
            if message is None:
                return False
            return await conversations.commit(turn, reply_message(message))

        return _settling(finish)

    # -- non-streaming ---------------------------------------------------------------------

    async def complete(self, call: ChatCall) -> ChatReply:
        turn, finish, trimmed = await self._begin(call)
        cached, body = await self._lookup(call)
        status = HIT
        if cached is None:
            body, status = await self._router.complete(call.request.model, call.payload), BYPASS
        elif body is None:
            flight, leads = await self._board(call, False, cached)
            flight.join()
            try:
                completion = await flight.result()
            finally:
                flight.leave()
            body, status = ({**completion}, MISS) if leads else (_fresh(completion), HIT)
        assert body is not None
        note_usage(body.get("usage"))
        if call.on_usage is not None and status is not HIT:
            await call.on_usage(body.get("usage"))
        headers = [status, *trimmed]
        if finish is not None and await finish(body) and turn is not None:
            body["conversation"] = turn.conversation_id
            headers.append((b"x-conversation-id", turn.conversation_id.encode()))
        return ChatReply(body, headers)

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, call: ChatCall) -> ChatStream:
        turn, finish, headers = await self._begin(call)
        if turn is not None:
            headers.append((b"x-conversation-id", turn.conversation_id.encode()))
        cached, hit = await self._lookup(call)
        if hit is not None:
            headers.append(HIT)
            return ChatStream(_replay(hit, call.include_usage, finish), headers)
        if cached is None:  # nothing to share: relayed in this request's own task
            events = await self._direct(call, finish)
            headers.append(BYPASS)
            return ChatStream(events, headers)
        flight, leads = await self._board(call, True, cached)
        flight.join()
        try:
            await flight.started()
        except BaseException:
            flight.leave()
            raise
        headers.append(MISS if leads else HIT)
        on_usage = call.on_usage if leads else None
        return ChatStream(_follow(flight, call.include_usage, finish, on_usage), headers)

    async def _direct(self, call: ChatCall, finish: Finish | None) -> AsyncGenerator[bytes, None]:
        """Open the upstream stream and read it up to its first chunk (a failure before it
        is the request's error); the events then follow in the request's task, not a flight's:
        one task switch less per chunk."""
        model = call.request.model
        upstream = await self._router.open_stream(model, asking_usage(call.payload))
        batches = aiter(upstream)
        relay = ChunkRelay(model)
        try:
            first: list[bytes] = []
            while not first:
                first = relay.events(await anext(batches))
        except StopAsyncIteration:
            await upstream.aclose()
            raise UpstreamUnreachable("The upstream stream ended before its last chunk.") from None
        except BaseException:
            await batches.aclose()
            await upstream.aclose()
            raise
        on_usage = call.on_usage
        return _relay(
            upstream, batches, relay, b"".join(first), call.include_usage, finish, on_usage
        )


def _settling(finish: Finish) -> Finish:
    """``finish`` run to its end even if its request is cancelled meanwhile (``settled``)."""

    async def run(completion: Json) -> bool:
        return await settled(finish(completion))

    return run


async def settled(write: Awaitable[T]) -> T:
    """Run a store write to its end even if the request is cancelled meanwhile (its client
    left, palaver is stopping): a write cut off halfway may still be applied, after its client
    was told otherwise. If the write succeeds, the cancellation is dropped and the request
    ends as a success (its ``[DONE]`` is sent); if it fails, the cancellation goes on."""
    task = asyncio.ensure_future(write)
    cancels = 0
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancels += 1
            continue
        except BaseException:
            if cancels:  # it failed: the cancellation goes on
                raise asyncio.CancelledError from None
            raise
        if cancels:
            current = asyncio.current_task()
            assert current is not None
            for _ in range(cancels):
                current.uncancel()
        return result


async def _follow(
    flight: Flight, include_usage: bool, finish: Finish | None, on_usage: OnUsage | None = None
) -> AsyncGenerator[bytes, None]:
    """Relay a flight; a failure after the first chunk ends the stream with an error event.
    ``finish`` stores the turn once the stream is complete, before ``[DONE]``."""
    try:
        async for data in flight.stream(include_usage):
            yield data
        if flight.completion is not None:
            await _ended(flight.completion, finish, on_usage)
    except PalaverError as exc:
        log.warning("stream failed: %s", exc.message)
        yield error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield error_event(PalaverError("The server failed while streaming."))
    finally:
        flight.leave()
    yield DONE


async def _relay(
    upstream: ChunkStream,
    batches: AsyncGenerator[list[Json], None],
    relay: ChunkRelay,
    first: bytes,
    include_usage: bool,
    finish: Finish | None,
    on_usage: OnUsage | None,
) -> AsyncGenerator[bytes, None]:
    """Relay a stream no other request shares, ``first`` its first events; as ``_follow``."""
    try:
        yield first
        async for batch in batches:
            out = relay.events(batch)
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
        completion = relay.completion()
        if include_usage and relay.usage_event is not None:
            yield relay.usage_event
        await _ended(completion, finish, on_usage)
    except PalaverError as exc:
        log.warning("stream failed: %s", exc.message)
        yield error_event(exc)
    except Exception:
        log.exception("stream failed")
        yield error_event(PalaverError("The server failed while streaming."))
    finally:
        await batches.aclose()
        await upstream.aclose()
    yield DONE


async def _ended(completion: Json, finish: Finish | None, on_usage: OnUsage | None) -> None:
    """A stream is complete: store its turn, count its usage."""
    if finish is not None:
        await finish(completion)
    note_usage(completion.get("usage"))
    if on_usage is not None:
        await on_usage(completion.get("usage"))


async def _replay(
    completion: Json, include_usage: bool, finish: Finish | None
) -> AsyncGenerator[bytes, None]:
    """A cached completion as a stream."""
    yield b"".join(encode_event(chunk) for chunk in replay_chunks(completion, include_usage))
    if finish is not None:
        try:
            await finish(completion)
        except PalaverError as exc:
            yield error_event(exc)
    yield DONE
