"""Single-flight: identical requests in flight at once share one upstream call.

The call runs in a task of its own, owned by no single client: a ``Flight``. Every request
for it, the first included, subscribes. Streaming subscribers receive its chunks as they
arrive (a late one first gets what was already produced); the others wait for the whole
completion. A failure reaches every subscriber, so none is left hanging; when the last
subscriber goes away (its client disconnected), the call is cancelled.

With a cache shared by several processes (``CacheBackend.board``), one process leads each
call and the flights of the others relay it (``redis_flights``); a process whose leader went
away before it relayed anything leads a fresh call itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from palaver.cache.base import CacheBackend, CacheUnavailable
from palaver.cache.redis_flights import LeaderGone, Lease, end_of, failure_of
from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.protocol import Json
from palaver.providers import ProviderRouter
from palaver.streaming import ChunkRelay, asking_usage, encode_event, replay_chunks

log = logging.getLogger("palaver.cache")

RELAY_ATTEMPTS = 3  # leaders that may vanish in a row before this process leads uncoordinated


class Cancelled(PalaverError):
    """The flight's call was cancelled (every client left, or shutdown)."""

    def __init__(self) -> None:
        super().__init__("The request was cancelled.", code="cancelled")


class Flight:
    __slots__ = (
        "_changed",
        "completion",
        "done",
        "error",
        "events",
        "lease",
        "relayed",
        "streaming",
        "subscribers",
        "task",
        "usage_event",
    )

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming
        self.events: list[bytes] = []  # encoded chunks with choices, in order
        self.usage_event: bytes | None = None
        self.completion: Json | None = None
        self.error: PalaverError | None = None
        self.done = False
        self.subscribers = 0
        self.task: asyncio.Task[None] | None = None
        self.lease: Lease | None = None  # this process leads the call for other processes
        self.relayed = False  # some chunk went out to a client
        self._changed = asyncio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def add(self, events: bytes) -> None:
        self.events.append(events)
        self.notify()

    def set_usage(self, event: bytes) -> None:
        self.usage_event = event

    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.done and self.task is not None:
            if self.lease is None:
                self.task.cancel()  # nobody is listening any more: cancel the upstream request
            else:
                self.lease.board.orphaned(self.lease)  # unless other processes listen

    async def result(self) -> Json:
        while not self.done:
            await self._changed.wait()
        if self.error is not None:
            raise self.error
        assert self.completion is not None
        return self.completion

    async def started(self) -> None:
        """Wait for the first chunk (or the end); raise if the call failed before it."""
        while not self.events and not self.done:
            await self._changed.wait()
        if not self.events and self.error is not None:
            raise self.error

    async def stream(self, include_usage: bool) -> AsyncIterator[bytes]:
        """SSE bytes as they come, batched by what arrived together; raises the call's error.
        A call that produced no chunks (not a stream) is replayed from its completion."""
        sent = 0
        while True:
            if sent < len(self.events):
                batch = self.events[sent:]
                sent += len(batch)
                self.relayed = True
                yield batch[0] if len(batch) == 1 else b"".join(batch)
            elif self.done:
                break
            else:
                await self._changed.wait()
        if self.error is not None:
            raise self.error
        if not sent:
            assert self.completion is not None
            chunks = replay_chunks(self.completion, include_usage)
            yield b"".join(encode_event(c) for c in chunks)
            return
        if include_usage and self.usage_event is not None:
            yield self.usage_event


class Flights:
    """The flights in progress, by cache key, and the cache they fill."""

    def __init__(self, router: ProviderRouter, backend: CacheBackend | None) -> None:
        self._router = router
        self._backend = backend
        self._board = backend.board if backend is not None else None
        self._flying: dict[str, Flight] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Cancel the flights still in the air (at shutdown)."""
        tasks = [f.task for f in self._flying.values() if f.task is not None and not f.done]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._releasing, return_exceptions=True)
        if self._board is not None:
            await self._board.close()

    def find(self, share: str) -> Flight | None:
        """An identical flight of this process that has not failed."""
        found = self._flying.get(share)
        return found if found is not None and found.error is None else None

    async def board(
        self, model: str, payload: Json, *, streaming: bool, share: str | None, store: str | None
    ) -> tuple[Flight, bool]:
        """Join an identical flight, or start one: leading the call, or relaying the call
        another process leads. Returns the flight and whether this request leads it.
        ``share``: identical requests may join under this key; ``store``: the cache key
        for its answer."""
        if share is not None:
            found = self.find(share)
            if found is not None:
                return found, False
            if self._board is not None:
                claim = await self._board.claim(share)
                found = self.find(share)
                if found is not None and not isinstance(claim, Lease):
                    return found, False  # started by this process meanwhile: join it
                flight = self.launch(
                    model, payload, streaming=streaming, share=share, store=store, claim=claim
                )
                return flight, not isinstance(claim, str)
        return self.launch(model, payload, streaming=streaming, share=share, store=store), True

    def launch(
        self,
        model: str,
        payload: Json,
        *,
        streaming: bool,
        share: str | None,
        store: str | None,
        claim: Lease | str | None = None,
    ) -> Flight:
        """Start a flight. ``claim``: the cross-process lock this process holds on
        ``share`` (a ``Lease``), or the token of the process that holds it (relay that)."""
        flight = Flight(streaming)
        if share is not None:
            self._flying[share] = flight
        flight.task = asyncio.create_task(self._fly(flight, model, payload, share, store, claim))
        # Landing in a callback also covers a task cancelled before it ever ran.
        flight.task.add_done_callback(lambda _: self._land(flight, share))
        if isinstance(claim, Lease):
            self._lead(flight, claim)
        return flight

    @staticmethod
    def _lead(flight: Flight, lease: Lease) -> None:
        task = flight.task
        assert task is not None
        flight.lease = lease
        lease.bind(lambda: flight.subscribers <= 0, task.cancel)

    async def _fly(
        self,
        flight: Flight,
        model: str,
        payload: Json,
        share: str | None,
        store: str | None,
        claim: Lease | str | None,
    ) -> None:
        try:
            led = await self._answer(flight, model, payload, share, claim)
        except PalaverError as exc:
            flight.error = exc
        except asyncio.CancelledError:
            flight.error = Cancelled()
            raise
        except Exception:
            log.exception("upstream call failed")
            flight.error = PalaverError("The server had an error processing the request.")
        finally:
            flight.done = True
            flight.notify()
        if flight.error is not None:
            return
        assert flight.completion is not None
        lease = flight.lease
        if lease is not None:
            if flight.usage_event is not None:
                lease.send(b"u", flight.usage_event)
            await lease.finish(end_of(flight.completion))
        # Until stored, the finished flight itself answers identical requests.
        if led and store is not None and self._backend is not None:
            try:
                await self._backend.set(store, flight.completion)
            except Exception:
                log.exception("storing a cache entry failed")

    async def _answer(
        self,
        flight: Flight,
        model: str,
        payload: Json,
        share: str | None,
        claim: Lease | str | None,
    ) -> bool:
        """Fill the flight: relay another process's call, or lead one. True if it led."""
        attempts = 0
        while isinstance(claim, str) and share is not None and self._board is not None:
            try:
                flight.completion = await self._board.relay(
                    share, claim, flight.add, flight.set_usage
                )
                return False
            except LeaderGone:
                if flight.relayed:
                    raise UpstreamUnreachable(
                        "The server producing this answer stopped before finishing it."
                    ) from None
                flight.events.clear()  # no client saw them: start afresh
                flight.usage_event = None
            flight.completion = await self._cached(share)  # it may have finished meanwhile
            if flight.completion is not None:
                return False
            attempts += 1
            claim = await self._board.claim(share) if attempts < RELAY_ATTEMPTS else None
            if isinstance(claim, Lease):
                self._lead(flight, claim)
        if flight.streaming:
            await self._fly_stream(flight, model, payload)
        else:
            flight.completion = await self._router.complete(model, payload)
        return True

    async def _cached(self, key: str) -> Json | None:
        if self._backend is None:
            return None
        try:
            return await self._backend.get(key)
        except CacheUnavailable:
            return None

    def _land(self, flight: Flight, share: str | None) -> None:
        if not flight.done:  # cancelled before it started
            flight.error, flight.done = Cancelled(), True
            flight.notify()
        if share is not None and self._flying.get(share) is flight:
            del self._flying[share]
        lease, flight.lease = flight.lease, None
        if lease is not None:
            # Other processes wait on this lock: release it even when cancelled, after telling
            # them of a failure (a cancelled call is no failure of theirs: they take over).
            error = flight.error
            failure = None if error is None or isinstance(error, Cancelled) else failure_of(error)
            release = asyncio.create_task(self._release(lease, failure))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)

    @staticmethod
    async def _release(lease: Lease, failure: bytes | None) -> None:
        try:
            if failure is not None:
                await lease.finish(failure)
        finally:
            await lease.release()

    async def _fly_stream(self, flight: Flight, model: str, payload: Json) -> None:
        upstream = await self._router.open_stream(model, asking_usage(payload))
        relay = ChunkRelay(model)
        events = flight.events
        try:
            async for batch in upstream:
                out = relay.events(batch)
                flight.usage_event = relay.usage_event
                if out:
                    events.extend(out)
                    flight.notify()
                    if flight.lease is not None:
                        flight.lease.send(b"d", b"".join(out))
            flight.completion = relay.completion()
        finally:
            await upstream.aclose()
