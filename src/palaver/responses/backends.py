"""Stored responses in SQLite (beside the conversations, surviving restarts) and in Redis
(shared by every palaver). The memory backend is in ``store``.

Each write is one statement (an upsert, a ``SET`` with its expiry), so a record is stored
whole or not at all. Expired records are never returned: SQLite skips and sweeps them, Redis
expires them itself.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from redis.asyncio import Redis

from palaver.errors import ServiceUnavailable
from palaver.redis_link import RedisBusy, RedisDown, RedisLink
from palaver.responses.store import StoredResponse

T = TypeVar("T")

SWEEP_EVERY = 500  # writes between two sweeps of expired records

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    expires_at REAL NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
"""


class SqliteResponses:
    """A table ``responses`` in the conversations' file, on a thread of its own."""

    available = True

    def __init__(self, path: str, ttl: float) -> None:
        self._path = path
        self._ttl = ttl
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="palaver-responses")
        self._db: sqlite3.Connection | None = None
        self._writes = 0

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "SqliteResponses.open() was not awaited"
        return self._db

    async def put(self, record: StoredResponse) -> None:
        body = record.to_bytes()
        expires = time.time() + self._ttl
        self._writes += 1
        sweep = self._writes % SWEEP_EVERY == 0

        def put() -> None:
            db = self._conn()
            db.execute(
                "INSERT OR REPLACE INTO responses (tenant, id, expires_at, body) "
                "VALUES (?, ?, ?, ?)",
                (record.tenant, record.id, expires, body),
            )
            if sweep:
                db.execute("DELETE FROM responses WHERE expires_at <= ?", (time.time(),))

        await self._run(put)

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        def get() -> Any:
            return (
                self._conn()
                .execute(
                    "SELECT body FROM responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                    (tenant, response_id, time.time()),
                )
                .fetchone()
            )

        row = await self._run(get)
        return None if row is None else StoredResponse.from_bytes(response_id, tenant, row[0])

    async def delete(self, response_id: str, tenant: str) -> bool:
        def delete() -> bool:
            cursor = self._conn().execute(
                "DELETE FROM responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                (tenant, response_id, time.time()),
            )
            return cursor.rowcount > 0

        return await self._run(delete)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._thread.shutdown(wait=True)


def unavailable(busy: bool) -> ServiceUnavailable:
    if busy:
        return ServiceUnavailable(
            "Response storage (Redis) is busy: every connection of this palaver is in use. "
            "Retry shortly."
        )
    return ServiceUnavailable("Response storage (Redis) is unreachable. Retry shortly.")


class RedisResponses:
    """One key a record, ``{prefix}resp:{tenant}:{id}``, expiring by itself."""

    def __init__(self, link: RedisLink, ttl: float) -> None:
        self._link = link
        self._ttl_ms = max(1, int(ttl * 1000))

    @property
    def available(self) -> bool:
        return not self._link.down

    def _key(self, response_id: str, tenant: str) -> str:
        return f"{self._link.prefix}resp:{tenant or '-'}:{response_id}"

    async def _call(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        try:
            return await self._link.run(call)
        except RedisBusy:
            raise unavailable(True) from None
        except RedisDown:
            raise unavailable(False) from None

    async def put(self, record: StoredResponse) -> None:
        key = self._key(record.id, record.tenant)
        body = record.to_bytes()
        await self._call(lambda r: r.set(key, body, px=self._ttl_ms))

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        key = self._key(response_id, tenant)
        data = await self._call(lambda r: r.get(key))
        return None if data is None else StoredResponse.from_bytes(response_id, tenant, data)

    async def delete(self, response_id: str, tenant: str) -> bool:
        key = self._key(response_id, tenant)
        return bool(await self._call(lambda r: r.delete(key)))

    async def close(self) -> None:
        return None
