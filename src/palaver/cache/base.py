"""The response cache: keys, request policy, and the in-memory backend.

One entry serves streaming and non-streaming requests alike: it holds the completed
``chat.completion`` (as compact JSON), which is replayed as a body or as a stream.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import orjson

from palaver.protocol import Json

if TYPE_CHECKING:
    from palaver.cache.redis_flights import FlightBoard

KEY_VERSION = b"palaver-cache-v1"
# Parameters that do not change what the model says. (Extension fields never reach the payload.)
NOT_IN_KEY = frozenset({"stream", "stream_options", "user"})
ENTRY_OVERHEAD = 128  # bytes of bookkeeping counted against max_bytes for every entry


def cache_key(tenant: str, payload: Json) -> str:
    """SHA-256 over the tenant and every output-affecting parameter, key order irrelevant.

    ``payload`` is what goes upstream: its messages are those after history and priority.
    """
    material = {k: v for k, v in payload.items() if k not in NOT_IN_KEY}
    digest = hashlib.sha256(KEY_VERSION)
    digest.update(b"\0" + tenant.encode() + b"\0")
    digest.update(orjson.dumps(material, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Policy:
    """What one request may do with the cache."""

    lookup: bool
    store: bool


DEFAULT_POLICY = Policy(lookup=True, store=True)


def policy_of(cache_control: bytes | None) -> Policy | None:
    """From the request's Cache-Control: ``no-cache`` skips the lookup (the fresh answer is
    still stored), ``no-store`` stores nothing. None: both, the cache is bypassed."""
    if cache_control is None:
        return DEFAULT_POLICY
    directives = {d.strip().split(b"=")[0].lower() for d in cache_control.split(b",")}
    lookup = b"no-cache" not in directives
    store = b"no-store" not in directives
    if not (lookup or store):
        return None
    return Policy(lookup, store)


class CacheUnavailable(Exception):
    """The cache backend cannot be used right now: serve without it."""


class CacheBackend(Protocol):
    """Holds completed ``chat.completion`` objects. Callers never mutate what ``get`` returns.

    ``get`` raises ``CacheUnavailable`` when the backend cannot be reached: the request is then
    served without the cache. ``board`` coordinates identical requests across the processes
    sharing the backend (None for a backend of one process: its flights suffice)."""

    @property
    def available(self) -> bool: ...

    @property
    def board(self) -> FlightBoard | None: ...

    async def get(self, key: str) -> Json | None: ...

    async def set(self, key: str, value: Json) -> None: ...

    async def close(self) -> None: ...


class MemoryCache:
    """Entries live ``ttl`` seconds; the least recently used go first once there are more than
    ``max_entries`` or they weigh more than ``max_bytes``. Memory never grows past it.

    Entries are kept as compact JSON bytes: exact to weigh, and invisible to the garbage
    collector (thousands of cached dicts would make every full collection slower)."""

    def __init__(self, ttl: float, max_entries: int, max_bytes: int) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[float, int, bytes]] = OrderedDict()
        self._bytes = 0

    available = True
    board = None  # one process: in-process flights already share identical calls

    @property
    def size(self) -> tuple[int, int]:
        """(entries, bytes) held now."""
        return len(self._entries), self._bytes

    async def get(self, key: str) -> Json | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        found: Json = orjson.loads(entry[2])
        return found

    async def set(self, key: str, value: Json) -> None:
        raw = orjson.dumps(value)
        weight = len(key) + len(raw) + ENTRY_OVERHEAD
        if weight > self._max_bytes:
            return
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic() + self._ttl, weight, raw)
        self._bytes += weight
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self._bytes -= self._entries.pop(key)[1]

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0
