"""Identical calls across palaver processes: one process leads, the others relay its answer.

Keys (``<key>`` is the cache key, ``<token>`` the leader's random token):

- ``<prefix>lock:<key>`` holds the leader's token. It lives ``LOCK_SECONDS`` and the leader
  renews it (only while it still holds it) every third of that for as long as the call lives,
  so an answer may take any time while a leader that dies loses the lock within seconds.
- ``<prefix>flight:<key>:<token>``: a Redis Stream of what the leader's call produced, entry
  ids ``0-1``, ``0-2``, ...: chunk batches (``d`` + SSE bytes), the usage chunk (``u``), and
  last the end (``e`` + JSON: the completion, or the error). Each entry is also published on
  the channel of that name, as ``<seq> <entry>``.

A follower subscribes to that channel (one pub/sub connection per process carries every
flight the process follows), reads the stream from its start (a late joiner first gets what
was already produced), then takes the published entries as they come; a jump in the numbering
(a message lost while reconnecting) sends it back to the stream. When nothing arrives for a
moment it looks at the lock: gone, without an end in the stream, means the leader died.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import orjson
from redis.exceptions import RedisError

from palaver.cache.redis_channels import Channels
from palaver.errors import PalaverError
from palaver.protocol import Json
from palaver.redis_link import RedisDown, RedisLink

log = logging.getLogger("palaver.cache")

LOCK_SECONDS = 10.0  # read when a board is built: tests shorten it

# Take the lock, or say who holds it (nil: taken).
_CLAIM = """
if redis.call('set', KEYS[1], ARGV[1], 'nx', 'px', ARGV[2]) then return false end
return redis.call('get', KEYS[1])
"""
# Keep the lock (and the flight's stream) alive, if it is still ours.
_RENEW = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('pexpire', KEYS[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[3])
return 1
"""
# Let go of the lock if it is ours; the stream lingers a little for followers about to read it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('pexpire', KEYS[2], ARGV[2])
return 0
"""
# Append entries numbered from ARGV[2] and publish each; returns the next number.
_PUBLISH = """
local seq = tonumber(ARGV[2])
for i = 3, #ARGV do
  redis.call('xadd', KEYS[1], '0-' .. seq, 'm', ARGV[i])
  redis.call('publish', KEYS[1], seq .. ' ' .. ARGV[i])
  seq = seq + 1
end
redis.call('pexpire', KEYS[1], ARGV[1])
return seq
"""


class LeaderGone(Exception):
    """The process leading the call went away (or cannot be reached) before its end."""


def end_of(completion: Json) -> bytes:
    return b"e" + orjson.dumps({"completion": completion})


def failure_of(error: PalaverError) -> bytes:
    fields = {
        "status": error.status,
        "message": error.message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in error.headers],
    }
    return b"e" + orjson.dumps({"error": fields})


def _outcome(body: bytes) -> Json:
    """The completion an end entry carries; raises the error it carries."""
    end: Any = orjson.loads(body)
    if "completion" in end:
        completion: Json = end["completion"]
        return completion
    fields = end["error"]
    raise PalaverError(
        fields["message"],
        status=fields["status"],
        type=fields["type"],
        param=fields["param"],
        code=fields["code"],
        headers=tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in fields["headers"]),
    )


class Lease:
    """This process leads the call for ``key``. ``send`` hands entries to a background pump
    (the leader's own clients never wait on Redis); ``finish`` flushes them."""

    def __init__(self, board: FlightBoard, key: str, token: str) -> None:
        self.board = board
        self.key = key
        self.token = token
        self.lock_key = board.lock_key(key)
        self.stream_key = board.stream_key(key, token)
        self.orphaned: Callable[[], bool] = lambda: False  # no local client left
        self.cancel: Callable[[], object] = lambda: None
        self.broken = False  # an entry may be missing: publish nothing more, renew no more
        self._seq = 1
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._ending = False

    def bind(self, orphaned: Callable[[], bool], cancel: Callable[[], object]) -> None:
        """Tie the lease to its flight, and keep the lock alive while it flies."""
        self.orphaned, self.cancel = orphaned, cancel
        self.board.hold(self)

    def send(self, kind: bytes, data: bytes) -> None:
        if self.broken:
            return
        self._pending.append(kind + data)
        if self._pump is None:
            self._pump = asyncio.create_task(self._run_pump())
        self._wake.set()

    async def finish(self, end: bytes) -> None:
        """Publish the end after everything sent before it."""
        self.send(b"", end)
        self._ending = True
        self._wake.set()
        if self._pump is not None:
            await self._pump

    async def release(self) -> None:
        self._ending = True
        self._wake.set()
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        await self.board.release(self)

    async def _run_pump(self) -> None:
        while True:
            if not self._pending:
                if self._ending:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending, []
            messages: list[bytes] = []
            for entry in batch:  # chunk batches sent together go out as one entry
                if entry[:1] == b"d" and messages and messages[-1][:1] == b"d":
                    messages[-1] += entry[1:]
                else:
                    messages.append(entry)
            try:
                self._seq = await self.board.publish(self.stream_key, self._seq, messages)
            except Exception as exc:
                if not isinstance(exc, RedisDown):
                    log.exception("publishing a shared call failed")
                # A follower must never relay a stream with a hole in it: stop here, and stop
                # renewing, so that followers see the lock go and give up or take over.
                self.broken = True
                self._pending.clear()
                return


class FlightBoard:
    """Leads and follows identical calls across processes, for one Redis link."""

    def __init__(self, link: RedisLink, lock_seconds: float | None = None) -> None:
        self._link = link
        self._prefix = link.prefix
        seconds = lock_seconds if lock_seconds is not None else LOCK_SECONDS
        self.lock_ms = max(1, int(seconds * 1000))
        self.renew_every = seconds / 3
        self.check_every = min(1.0, seconds / 4)  # a quiet follower looks at the lock this often
        self._claim = link.client.register_script(_CLAIM)
        self._renew = link.client.register_script(_RENEW)
        self._release = link.client.register_script(_RELEASE)
        self._publish = link.client.register_script(_PUBLISH)
        self._held: dict[str, Lease] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()
        self._channels = Channels(link)

    def lock_key(self, key: str) -> str:
        return self._prefix + "lock:" + key

    def stream_key(self, key: str, token: str) -> str:
        return self._prefix + "flight:" + key + ":" + token

    async def close(self) -> None:
        tasks = list(self._chores)
        if self._renewer is not None:
            tasks.append(self._renewer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._channels.close()

    # -- leading ---------------------------------------------------------------------------

    async def claim(self, key: str) -> Lease | str | None:
        """A lease if this process may lead the call for ``key``; the leader's token if
        another process leads it; None if Redis cannot be reached (lead, uncoordinated)."""
        lease = Lease(self, key, secrets.token_hex(8))
        try:
            holder = await self._link.run(
                lambda r: self._claim(
                    keys=[lease.lock_key], args=[lease.token, self.lock_ms], client=r
                )
            )
        except RedisDown:
            return None
        except asyncio.CancelledError:
            self._chore(self.release(lease))  # it may have been taken: do not leave it held
            raise
        return lease if holder is None else holder.decode()

    def hold(self, lease: Lease) -> None:
        self._held[lease.token] = lease
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_all())

    async def release(self, lease: Lease) -> None:
        self._held.pop(lease.token, None)
        with contextlib.suppress(RedisDown):  # if Redis is gone, the lock expires by itself
            await self._link.run(
                lambda r: self._release(
                    keys=[lease.lock_key, lease.stream_key],
                    args=[lease.token, self.lock_ms],
                    client=r,
                )
            )

    async def publish(self, stream: str, seq: int, messages: list[bytes]) -> int:
        linger = 2 * self.lock_ms  # renewed with the lock: a quiet call keeps its stream
        result = await self._link.run(
            lambda r: self._publish(keys=[stream], args=[linger, seq, *messages], client=r)
        )
        return int(result)

    async def _renew_all(self) -> None:
        """Renew every lock this process holds, in one round trip; cancel calls nobody wants."""
        try:
            while self._held:
                await asyncio.sleep(self.renew_every)
                leases = [lease for lease in self._held.values() if not lease.broken]
                orphans = [lease for lease in leases if lease.orphaned()]
                if not leases:
                    continue
                try:
                    results = await self._link.run(partial(self._renew_round, leases, orphans))
                except Exception as exc:
                    if not isinstance(exc, RedisDown):
                        log.exception("renewing the locks on shared calls failed")
                    continue  # try again next round; followers wait as long as the lock lives
                for lease, held in zip(leases, results, strict=False):
                    if not held and self._held.pop(lease.token, None) is not None:
                        # Redis stalled past the lock's life: another process may lead now.
                        log.warning("the lock on a shared call was lost before it ended")
                for lease, listeners in zip(orphans, results[len(leases) :], strict=True):
                    if not listeners[0][1] and lease.orphaned():
                        lease.cancel()  # no client here, no follower elsewhere
        finally:
            self._renewer = None

    async def _renew_round(self, leases: list[Lease], orphans: list[Lease], r: Any) -> list[Any]:
        async with r.pipeline(transaction=False) as pipe:
            for lease in leases:
                keys = [lease.lock_key, lease.stream_key]
                await self._renew(
                    keys=keys, args=[lease.token, self.lock_ms, 2 * self.lock_ms], client=pipe
                )
            for lease in orphans:
                pipe.pubsub_numsub(lease.stream_key)
            result: list[Any] = await pipe.execute()
            return result

    def orphaned(self, lease: Lease) -> None:
        """The lease's last local client left: cancel the call unless another process
        follows it (listens on its channel). The renewal rounds look again later."""
        self._chore(self._cancel_if_unfollowed(lease))

    def _chore(self, work: Coroutine[Any, Any, None]) -> None:
        chore = asyncio.create_task(work)
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    async def _cancel_if_unfollowed(self, lease: Lease) -> None:
        try:
            counts = await self._link.run(lambda r: r.pubsub_numsub(lease.stream_key))
        except RedisDown:
            counts = []  # no follower can hear it either
        except Exception:
            log.exception("counting the followers of a shared call failed")
            return  # the renewal rounds look again
        if not (counts and counts[0][1]) and lease.orphaned():
            lease.cancel()

    # -- following -------------------------------------------------------------------------

    async def relay(
        self,
        key: str,
        token: str,
        chunks: Callable[[bytes], None],
        usage: Callable[[bytes], None],
    ) -> Json:
        """Relay the call another process leads: chunk batches and the usage chunk as they
        come. Returns its completion; raises its error, or ``LeaderGone``."""
        stream = self.stream_key(key, token)
        try:
            queue = await self._channels.open(stream)
        except (RedisError, OSError):
            raise LeaderGone from None
        try:
            expected = 1
            alive = time.monotonic()
            held, entries = await self._look(key, token, expected)
            if not held and not entries:
                raise LeaderGone
            while True:
                gap = False
                for seq, entry in entries:
                    if seq < expected:
                        continue
                    if seq > expected:
                        gap = True  # some entries did not come by the channel
                        break
                    expected += 1
                    kind, body = entry[:1], entry[1:]
                    if kind == b"d":
                        chunks(body)
                    elif kind == b"u":
                        usage(body)
                    elif kind == b"e":
                        return _outcome(body)
                if gap:
                    held, entries = await self._look(key, token, expected)
                    continue
                try:
                    async with asyncio.timeout(self.check_every):
                        message = await queue.get()
                except TimeoutError:
                    held, entries = await self._look(key, token, expected)
                    if entries or held:
                        alive = time.monotonic()
                    elif held is False or time.monotonic() - alive > self.lock_ms / 1000:
                        raise LeaderGone from None
                    continue
                seq_text, _, entry = message.partition(b" ")
                entries = [(int(seq_text), entry)]
                alive = time.monotonic()
        finally:
            self._channels.leave(stream, queue)

    async def _look(
        self, key: str, token: str, start: int
    ) -> tuple[bool | None, list[tuple[int, bytes]]]:
        """Whether the leader still holds the lock (None: unknown), and the stream's entries
        from number ``start`` on."""
        lock, stream = self.lock_key(key), self.stream_key(key, token)

        async def look(r: Any) -> list[Any]:
            async with r.pipeline(transaction=False) as pipe:
                pipe.get(lock)
                pipe.xrange(stream, f"0-{start}", "+")
                result: list[Any] = await pipe.execute()
                return result

        try:
            holder, raw = await self._link.run(look)
        except RedisDown:
            return None, []
        entries = [(int(sid.split(b"-")[1]), fields[b"m"]) for sid, fields in raw]
        return holder == token.encode(), entries
