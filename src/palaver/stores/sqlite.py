"""Conversations in a SQLite file: the default; survives restarts; shared by worker processes.

Every call runs atomically on a single thread of its own, so the event loop never waits on
the disk and no two calls of a process interleave; calls that arrive together share one
transaction, each in a savepoint (group commit, ``sqlite_batch``). WAL mode lets readers run beside
the writer; ``BEGIN IMMEDIATE`` and a busy timeout serialise writers across processes, so
concurrent turns on one conversation never lose a message. The schema is versioned
(``PRAGMA user_version``) and older files are migrated when opened (``sqlite_schema``).
Recently used conversations are kept decoded (``sqlite_cache``): a turn reads their rows again
only when a write, of this process or another, changed them since.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from palaver.conversations.priority import keep
from palaver.protocol import Message
from palaver.stores.base import (
    TOMBSTONE_SECONDS,
    AlreadyExists,
    ConversationInfo,
    Counts,
    Gone,
    Limits,
    Snapshot,
    StoredMessage,
    counted,
    new_item_id,
)
from palaver.stores.sqlite_batch import Batcher, Db
from palaver.stores.sqlite_cache import UNSET, Key, Recent, Rows, Version, size
from palaver.stores.sqlite_schema import migrate

T = TypeVar("T")

_INFO = "id, tenant, created_at, updated_at, message_count, metadata, epoch"
_WHERE = "tenant = ? AND id = ?"
_MESSAGES = "tenant = ? AND conversation_id = ?"
# The conversation and its version (``sqlite_cache``): the largest seq of its messages (0 for
# none; one step down the index the messages are read by) and their count.
_FIND = (
    f"SELECT {_INFO}, (SELECT coalesce(max(seq), 0) FROM messages"
    " WHERE tenant = ?1 AND conversation_id = ?2) FROM conversations WHERE tenant = ?1 AND id = ?2"
)


def _bodies(texts: list[str]) -> list[Message]:
    """The JSON bodies of a conversation's rows, parsed in one call, not one a row."""
    parsed: list[Message] = orjson.loads("[" + ",".join(texts) + "]")
    return parsed


def _tokens(text: str | None) -> Counts | None:
    return None if text is None else orjson.loads(text)


def _stored(rows: list[Any]) -> list[StoredMessage]:
    """Rows of (item_id, created_at, body, tokens) as messages."""
    bodies = _bodies([r[2] for r in rows])
    return [
        StoredMessage(r[0], r[1], body, _tokens(r[3])) for r, body in zip(rows, bodies, strict=True)
    ]


def _info(row: Any) -> ConversationInfo:
    return ConversationInfo(row[0], row[1], row[2], row[3], row[4], orjson.loads(row[5]), row[6])


class SqliteStore:
    available = True

    def __init__(self, path: str, limits: Limits | None = None) -> None:
        self._path = path
        self._limits = limits or Limits()
        self._batcher = Batcher()
        self._recent = Recent()  # touched on the store's thread only

    async def open(self) -> None:
        await self._batcher.run(self._open)

    def _open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 10000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        migrate(db)
        self._batcher.db = db

    async def _read(self, fn: Callable[[Db], T]) -> T:
        return await self._batcher.call(fn, False)

    async def _write(self, fn: Callable[[Db], T]) -> T:
        return await self._batcher.call(fn, True)

    # -- helpers run inside a transaction ------------------------------------------------------

    def _find(
        self, db: Db, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, Version] | None:
        """The conversation and the version of its messages, if it is there."""
        row = db.execute(_FIND, (tenant, conversation_id)).fetchone()
        if row is None:
            return None
        info = _info(row)
        idle_ttl = self._limits.idle_ttl
        if idle_ttl and info.updated_at < time.time() - idle_ttl:
            self._remove(db, [(tenant, conversation_id, info.epoch)])
            return None
        return info, (info.epoch, row[7], info.message_count)

    def _rows(self, db: Db, key: Key, version: Version) -> Rows:
        """The conversation's messages, kept decoded from the last time if they are fresh."""
        rows = self._recent.get(key, version)
        if rows is None:
            rows = self._select(db, key, version)
            self._remember(key, rows)
        return rows

    @staticmethod
    def _select(db: Db, key: Key, version: Version) -> Rows:
        found = db.execute(
            f"SELECT seq, item_id, created_at, body, tokens FROM messages WHERE {_MESSAGES}"
            " ORDER BY seq",
            key,
        ).fetchall()
        total = sum(size(r[3], r[4]) for r in found)
        return Rows(version, [r[0] for r in found], _stored([r[1:] for r in found]), total)

    def _remember(self, key: Key, rows: Rows) -> None:
        """Keep ``rows``; forget them if what this call wrote is rolled back."""
        recent = self._recent
        recent.put(key, rows)
        self._batcher.undo(lambda: recent.forget(key))

    @staticmethod
    def _next_epoch(db: Db, conversation_id: str, tenant: str) -> int:
        row = db.execute(
            f"SELECT epoch FROM tombstones WHERE {_WHERE}", (tenant, conversation_id)
        ).fetchone()
        return 1 if row is None else int(row[0]) + 1

    def _remove(self, db: Db, doomed: list[tuple[str, str, int]]) -> None:
        """Delete conversations (tenant, id, epoch), leaving their tombstones."""
        now = time.time()
        pairs = [(tenant, cid) for tenant, cid, _ in doomed]
        for pair in pairs:
            self._recent.forget(pair)
        db.executemany(f"DELETE FROM messages WHERE {_MESSAGES}", pairs)
        db.executemany(f"DELETE FROM conversations WHERE {_WHERE}", pairs)
        db.executemany(
            "INSERT OR REPLACE INTO tombstones (tenant, id, epoch, deleted_at) VALUES (?, ?, ?, ?)",
            [(tenant, cid, epoch, now) for tenant, cid, epoch in doomed],
        )

    def _add(
        self,
        db: Db,
        info: ConversationInfo,
        prior: Rows | None,
        messages: list[Message],
        now: float,
        counts: Sequence[Counts] | None = None,
    ) -> None:
        """Insert ``messages`` into the conversation whose rows are ``prior`` (None: not known
        here) and trim it to ``max_messages`` by instruction priority; sets its message count
        and keeps its rows as they now are, when they are known."""
        key = (info.tenant, info.id)
        seqs: list[int] = []
        added: list[StoredMessage] = []
        total = 0
        for message, c in counted(messages, counts):
            body = orjson.dumps(message).decode()
            tokens = None if c is None else orjson.dumps(c).decode()
            item = new_item_id()
            cursor = db.execute(
                "INSERT INTO messages (tenant, conversation_id, item_id, created_at, body, tokens)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (info.tenant, info.id, item, now, body, tokens),
            )
            seqs.append(cursor.lastrowid or 0)
            # as a read would give it back, whatever the caller does with ``message`` later
            added.append(StoredMessage(item, now, orjson.loads(body), _tokens(tokens)))
            total += size(body, tokens)
        count = info.message_count + len(added)
        rows = None
        if prior is not None:
            rows = Rows(UNSET, prior.seqs + seqs, prior.messages + added, prior.size + total)
        limit = self._limits.max_messages
        if count > limit:
            rows = rows or self._select(db, key, UNSET)
            kept = keep([s.message for s in rows.messages], limit)
            chosen = set(kept)
            db.executemany(
                "DELETE FROM messages WHERE seq = ?",
                [(seq,) for i, seq in enumerate(rows.seqs) if i not in chosen],
            )
            share = rows.size * len(kept) // max(len(rows.seqs), 1)
            rows = Rows(
                UNSET, [rows.seqs[i] for i in kept], [rows.messages[i] for i in kept], share
            )
            count = len(kept)
        info.message_count = count
        if rows is not None:
            rows.version = (info.epoch, rows.seqs[-1] if rows.seqs else 0, count)
            self._remember(key, rows)

    def _evict(self, db: Db) -> int:
        """Remove the least recently used past ``max_active``; forget old tombstones."""
        doomed = db.execute(
            "SELECT tenant, id, epoch FROM conversations"
            " ORDER BY updated_at DESC LIMIT -1 OFFSET ?",
            (self._limits.max_active,),
        ).fetchall()
        self._remove(db, doomed)
        db.execute(
            "DELETE FROM tombstones WHERE deleted_at < ?", (time.time() - TOMBSTONE_SECONDS,)
        )
        return len(doomed)

    def _start(
        self,
        db: Db,
        info: ConversationInfo,
        messages: list[Message],
        now: float,
        counts: Sequence[Counts] | None = None,
    ) -> ConversationInfo:
        db.execute(
            f"INSERT INTO conversations ({_INFO}) VALUES (?, ?, ?, ?, 0, ?, ?)",
            (info.id, info.tenant, now, now, orjson.dumps(info.metadata).decode(), info.epoch),
        )
        self._add(db, info, None, messages, now, counts)
        db.execute(
            f"UPDATE conversations SET message_count = ? WHERE {_WHERE}",
            (info.message_count, info.tenant, info.id),
        )
        self._evict(db)
        return info

    # -- the protocol ----------------------------------------------------------------------------

    async def load(self, conversation_id: str, tenant: str) -> Snapshot:
        def load(db: Db) -> Snapshot:
            found = self._find(db, conversation_id, tenant)
            if found is None:
                return Snapshot(None, [], self._next_epoch(db, conversation_id, tenant))
            info, version = found
            rows = self._rows(db, (tenant, conversation_id), version)
            return Snapshot(info, list(rows.messages), info.epoch)

        # An idle-expired conversation is removed as it is found: that read writes.
        return await self._batcher.call(load, bool(self._limits.idle_ttl))

    async def create(
        self, conversation_id: str, tenant: str, metadata: dict[str, str], messages: list[Message]
    ) -> ConversationInfo:
        def create(db: Db) -> ConversationInfo:
            if self._find(db, conversation_id, tenant) is not None:
                raise AlreadyExists(conversation_id)
            now = time.time()
            epoch = self._next_epoch(db, conversation_id, tenant)
            info = ConversationInfo(conversation_id, tenant, now, now, 0, dict(metadata), epoch)
            return self._start(db, info, messages, now)

        return await self._write(create)

    async def append(
        self,
        conversation_id: str,
        tenant: str,
        messages: list[Message],
        *,
        epoch: int,
        turn: str | None = None,
        counts: Sequence[Counts] | None = None,
    ) -> ConversationInfo:
        def append(db: Db) -> ConversationInfo:
            now = time.time()
            found = self._find(db, conversation_id, tenant)
            if found is None:
                if epoch != self._next_epoch(db, conversation_id, tenant):
                    raise Gone(conversation_id)
                started = ConversationInfo(conversation_id, tenant, now, now, epoch=epoch)
                return self._start(db, started, messages, now, counts)
            info, version = found
            if info.epoch != epoch:
                raise Gone(conversation_id)
            prior = self._recent.get((tenant, conversation_id), version)
            self._add(db, info, prior, messages, now, counts)
            info.updated_at = now
            db.execute(
                f"UPDATE conversations SET updated_at = ?, message_count = ? WHERE {_WHERE}",
                (now, info.message_count, tenant, conversation_id),
            )
            return info

        return await self._write(append)

    async def set_metadata(
        self, conversation_id: str, tenant: str, metadata: dict[str, str]
    ) -> ConversationInfo | None:
        def update(db: Db) -> ConversationInfo | None:
            found = self._find(db, conversation_id, tenant)
            if found is None:
                return None
            info = found[0]
            db.execute(
                f"UPDATE conversations SET metadata = ? WHERE {_WHERE}",
                (orjson.dumps(metadata).decode(), tenant, conversation_id),
            )
            info.metadata = dict(metadata)
            return info

        return await self._write(update)

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        def delete(db: Db) -> bool:
            found = self._find(db, conversation_id, tenant)
            if found is None:
                return False
            self._remove(db, [(tenant, conversation_id, found[0].epoch)])
            return True

        return await self._write(delete)

    async def list(
        self, tenant: str, limit: int, after: str | None
    ) -> tuple[list[ConversationInfo], bool]:
        def page(db: Db) -> tuple[list[ConversationInfo], bool]:
            query = f"SELECT {_INFO} FROM conversations WHERE tenant = ?"
            args: list[Any] = [tenant]
            if after is not None:
                cursor = db.execute(
                    f"SELECT created_at FROM conversations WHERE {_WHERE}", (tenant, after)
                ).fetchone()
                if cursor is None:
                    return [], False
                query += " AND (created_at < ? OR (created_at = ? AND id < ?))"
                args += [cursor[0], cursor[0], after]
            query += " ORDER BY created_at DESC, id DESC LIMIT ?"
            rows = db.execute(query, [*args, limit + 1]).fetchall()
            return [_info(r) for r in rows[:limit]], len(rows) > limit

        return await self._read(page)

    async def enforce_limits(self) -> int:
        def enforce(db: Db) -> int:
            now = time.time()
            removed = 0
            if self._limits.idle_ttl:
                idle = db.execute(
                    "SELECT tenant, id, epoch FROM conversations WHERE updated_at < ?",
                    (now - self._limits.idle_ttl,),
                ).fetchall()
                self._remove(db, idle)
                removed = len(idle)
            return removed + self._evict(db)

        return await self._write(enforce)

    async def close(self) -> None:
        await self._batcher.run(self._batcher.close_db)  # after the calls queued before
        self._batcher.shutdown()
