"""Conversations in a SQLite file: the default; survives restarts; shared by worker processes.

Every call runs as one transaction on a single thread of its own, so the event loop never
waits on the disk and no two calls of a process interleave. WAL mode lets readers run beside
the writer; ``BEGIN IMMEDIATE`` and a busy timeout serialise writers across processes, so
concurrent turns on one conversation never lose a message.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from palaver.protocol import Message
from palaver.stores.base import (
    AlreadyExists,
    ConversationInfo,
    NotOwner,
    Selector,
    StoredMessage,
    new_item_id,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS conversations_by_use ON conversations (updated_at);
CREATE INDEX IF NOT EXISTS conversations_by_tenant ON conversations (tenant, created_at, id);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, seq);
"""

_INFO = "id, tenant, created_at, updated_at, message_count, metadata"


def _info(row: Any) -> ConversationInfo:
    return ConversationInfo(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]))


class SqliteStore:
    available = True

    def __init__(self, path: str, idle_ttl: float = 0.0) -> None:
        self._path = path
        self._idle_ttl = idle_ttl
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="palaver-sqlite")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T], write: bool) -> T:
        db = self._db
        assert db is not None, "SqliteStore.open() was not awaited"
        db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # -- helpers run inside a transaction ------------------------------------------------------

    def _find(self, db: sqlite3.Connection, conversation_id: str, tenant: str) -> Any:
        row = db.execute(f"SELECT {_INFO} FROM conversations WHERE id = ?", (conversation_id,))
        found = row.fetchone()
        if found is None:
            return None
        if self._idle_ttl and found[3] < time.time() - self._idle_ttl:
            self._remove(db, [conversation_id])
            return None
        if found[1] != tenant:
            raise NotOwner(conversation_id)
        return found

    @staticmethod
    def _remove(db: sqlite3.Connection, ids: list[str]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            db.execute(f"DELETE FROM messages WHERE conversation_id IN ({marks})", chunk)
            db.execute(f"DELETE FROM conversations WHERE id IN ({marks})", chunk)

    @staticmethod
    def _insert(
        db: sqlite3.Connection, conversation_id: str, messages: list[Message], now: float
    ) -> None:
        db.executemany(
            "INSERT INTO messages (conversation_id, item_id, created_at, body) VALUES (?, ?, ?, ?)",
            [(conversation_id, new_item_id(), now, orjson.dumps(m).decode()) for m in messages],
        )

    # -- the protocol ----------------------------------------------------------------------------

    async def load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]] | None:
        def load(db: sqlite3.Connection) -> tuple[ConversationInfo, list[StoredMessage]] | None:
            found = self._find(db, conversation_id, tenant)
            if found is None:
                return None
            rows = db.execute(
                "SELECT item_id, created_at, body FROM messages"
                " WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            ).fetchall()
            return _info(found), [StoredMessage(r[0], r[1], orjson.loads(r[2])) for r in rows]

        return await self._run(self._transaction, load, bool(self._idle_ttl))

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        def create(db: sqlite3.Connection) -> ConversationInfo:
            now = time.time()
            try:
                db.execute(
                    f"INSERT INTO conversations ({_INFO}) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        conversation_id,
                        tenant,
                        now,
                        now,
                        len(messages),
                        orjson.dumps(metadata).decode(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(conversation_id) from None
            self._insert(db, conversation_id, messages, now)
            return ConversationInfo(conversation_id, tenant, now, now, len(messages), metadata)

        return await self._run(self._transaction, create, True)

    async def append(
        self, conversation_id: str, tenant: str, messages: list[Message], select: Selector
    ) -> ConversationInfo:
        def append(db: sqlite3.Connection) -> ConversationInfo:
            now = time.time()
            found = self._find(db, conversation_id, tenant)
            if found is None:
                db.execute(
                    f"INSERT INTO conversations ({_INFO}) VALUES (?, ?, ?, ?, 0, '{{}}')",
                    (conversation_id, tenant, now, now),
                )
                info = ConversationInfo(conversation_id, tenant, now, now)
            else:
                info = _info(found)
            self._insert(db, conversation_id, messages, now)
            rows = db.execute(
                "SELECT seq, body FROM messages WHERE conversation_id = ? ORDER BY seq",
                (conversation_id,),
            ).fetchall()
            kept = select([orjson.loads(r[1]) for r in rows])
            if len(kept) != len(rows):
                keep = set(kept)
                db.executemany(
                    "DELETE FROM messages WHERE seq = ?",
                    [(r[0],) for i, r in enumerate(rows) if i not in keep],
                )
            info.updated_at = now
            info.message_count = len(kept)
            db.execute(
                "UPDATE conversations SET updated_at = ?, message_count = ? WHERE id = ?",
                (now, len(kept), conversation_id),
            )
            return info

        return await self._run(self._transaction, append, True)

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        def update(db: sqlite3.Connection) -> ConversationInfo | None:
            found = self._find(db, conversation_id, tenant)
            if found is None:
                return None
            db.execute(
                "UPDATE conversations SET metadata = ? WHERE id = ?",
                (orjson.dumps(metadata).decode(), conversation_id),
            )
            info = _info(found)
            info.metadata = dict(metadata)
            return info

        return await self._run(self._transaction, update, True)

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        def delete(db: sqlite3.Connection) -> bool:
            if self._find(db, conversation_id, tenant) is None:
                return False
            self._remove(db, [conversation_id])
            return True

        return await self._run(self._transaction, delete, True)

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        def page(db: sqlite3.Connection) -> tuple[list[ConversationInfo], bool]:
            query = f"SELECT {_INFO} FROM conversations WHERE tenant = ?"
            args: list[Any] = [tenant]
            if after is not None:
                cursor = db.execute(
                    "SELECT created_at FROM conversations WHERE id = ? AND tenant = ?",
                    (after, tenant),
                ).fetchone()
                if cursor is None:
                    return [], False
                query += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args += [cursor[0], cursor[0], after]
            query += " ORDER BY created_at DESC, id DESC LIMIT ?"
            rows = db.execute(query, [*args, limit + 1]).fetchall()
            return [_info(r) for r in rows[:limit]], len(rows) > limit

        return await self._run(self._transaction, page, False)

    async def enforce_limits(self, max_active: int, idle_ttl: float) -> int:
        def enforce(db: sqlite3.Connection) -> int:
            doomed: list[str] = []
            if idle_ttl:
                cutoff = time.time() - idle_ttl
                doomed += [
                    r[0]
                    for r in db.execute(
                        "SELECT id FROM conversations WHERE updated_at < ?", (cutoff,)
                    )
                ]
            doomed += [
                r[0]
                for r in db.execute(
                    "SELECT id FROM conversations ORDER BY updated_at DESC LIMIT -1 OFFSET ?",
                    (max_active,),
                )
            ]
            doomed = list(dict.fromkeys(doomed))
            self._remove(db, doomed)
            return len(doomed)

        return await self._run(self._transaction, enforce, True)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await self._run(db.close)
        self._thread.shutdown(wait=True)
