"""Single-flight: identical requests in flight at once share one upstream call.

The call runs in a task of its own, owned by no single client: a ``Flight``. Every request
for it, the first included, subscribes. Streaming subscribers receive its chunks as they
arrive (a late one first gets what was already produced); the others wait for the whole
completion. A failure reaches every subscriber, so none is left hanging; when the last
subscriber goes away (its client disconnected), the call is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from palaver.cache import CacheBackend
from palaver.errors import PalaverError, UpstreamUnreachable
from palaver.protocol import Json
from palaver.providers import ProviderRouter
from palaver.streaming import (
    ChunkNormalizer,
    CompletionAccumulator,
    encode_event,
    replay_chunks,
)

log = logging.getLogger("palaver.cache")


class Flight:
    __slots__ = (
        "_changed",
        "completion",
        "done",
        "error",
        "events",
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
        self._changed = asyncio.Event()

    def notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def join(self) -> None:
        self.subscribers += 1

    def leave(self) -> None:
        self.subscribers -= 1
        if self.subscribers <= 0 and not self.done and self.task is not None:
            self.task.cancel()  # nobody is listening any more: cancel the upstream request

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
        """SSE bytes as they come, batched by what arrived together; raises the call's error."""
        if not self.streaming:
            completion = await self.result()
            yield b"".join(encode_event(c) for c in replay_chunks(completion, include_usage))
            return
        sent = 0
        while True:
            if sent < len(self.events):
                batch = self.events[sent:]
                sent += len(batch)
                yield batch[0] if len(batch) == 1 else b"".join(batch)
            elif self.done:
                break
            else:
                await self._changed.wait()
        if self.error is not None:
            raise self.error
        if include_usage and self.usage_event is not None:
            yield self.usage_event


class Flights:
    """The flights in progress, by cache key, and the cache they fill."""

    def __init__(self, router: ProviderRouter, backend: CacheBackend | None) -> None:
        self._router = router
        self._backend = backend
        self._flying: dict[str, Flight] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Cancel the flights still in the air (at shutdown)."""
        tasks = [f.task for f in self._flying.values() if f.task is not None and not f.done]
        tasks += list(self._releasing)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def find(self, share: str) -> Flight | None:
        """An identical flight of this process that has not failed."""
        found = self._flying.get(share)
        return found if found is not None and found.error is None else None

    def launch(
        self,
        model: str,
        payload: Json,
        *,
        streaming: bool,
        share: str | None,
        store: str | None,
        lock: str | None,
    ) -> Flight:
        """Start a flight. ``share``: identical requests may join it under this key.
        ``store``: the cache key for its answer. ``lock``: the cross-process lock this
        process holds on ``share``, released when the flight lands."""
        flight = Flight(streaming)
        if share is not None:
            self._flying[share] = flight
        flight.task = asyncio.create_task(self._fly(flight, model, payload, share, store, lock))
        return flight

    async def _fly(
        self,
        flight: Flight,
        model: str,
        payload: Json,
        share: str | None,
        store: str | None,
        lock: str | None,
    ) -> None:
        try:
            if flight.streaming:
                await self._fly_stream(flight, model, payload)
            else:
                flight.completion = await self._router.complete(model, payload)
        except PalaverError as exc:
            flight.error = exc
        except asyncio.CancelledError:
            flight.error = PalaverError("The request was cancelled.", code="cancelled")
            raise
        except Exception:
            log.exception("upstream call failed")
            flight.error = PalaverError("The server had an error processing the request.")
        finally:
            flight.done = True
            flight.notify()
            if flight.error is not None:
                self._land(flight, share, lock)
        # Until stored, the finished flight itself answers identical requests.
        if store is not None and self._backend is not None and flight.completion is not None:
            try:
                await self._backend.set(store, flight.completion)
            except Exception:
                log.exception("storing a cache entry failed")
        self._land(flight, share, lock)

    def _land(self, flight: Flight, share: str | None, lock: str | None) -> None:
        if share is not None and self._flying.get(share) is flight:
            del self._flying[share]
        if lock and share is not None and self._backend is not None:
            # Other processes wait on this lock: release it even when cancelled.
            release = asyncio.create_task(self._backend.unlock(share, lock))
            self._releasing.add(release)
            release.add_done_callback(self._releasing.discard)

    async def _fly_stream(self, flight: Flight, model: str, payload: Json) -> None:
        upstream = await self._router.open_stream(model, payload)
        normalize = ChunkNormalizer(model=model, include_usage=True)
        whole = CompletionAccumulator()
        try:
            async for batch in upstream:
                added = False
                for chunk in batch:
                    out = normalize(chunk)
                    if out is None:
                        continue
                    whole.add(out)
                    if out["choices"]:
                        flight.events.append(encode_event(out))
                        added = True
                    else:
                        flight.usage_event = encode_event(out)
                if added:
                    flight.notify()
            if not normalize.complete:
                raise UpstreamUnreachable("The upstream stream ended before its last chunk.")
        finally:
            await upstream.aclose()
        flight.completion = whole.completion()
