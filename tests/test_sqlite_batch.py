"""The SQLite store's group commit: calls that arrive together share one transaction, each
still atomic in its savepoint; a failed commit writes nothing of the batch."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from palaver.stores.sqlite import SqliteStore
from palaver.stores.sqlite_batch import Batcher, Db


async def _batcher(tmp_path: Path) -> tuple[Batcher, list[str]]:
    batcher = Batcher()
    statements: list[str] = []

    def open_db() -> None:
        db = sqlite3.connect(tmp_path / "b.sqlite3", isolation_level=None, check_same_thread=False)
        db.execute("CREATE TABLE t (v INTEGER UNIQUE)")
        db.set_trace_callback(statements.append)
        batcher.db = db

    await batcher.run(open_db)
    return batcher, statements


def _insert(value: int) -> Callable[[Db], int]:
    def insert(db: Db) -> int:
        db.execute("INSERT INTO t (v) VALUES (?)", (value,))
        return value

    return insert


async def _values(batcher: Batcher) -> list[int]:
    rows = await batcher.call(lambda db: db.execute("SELECT v FROM t ORDER BY v").fetchall(), False)
    return [r[0] for r in rows]


async def test_calls_arriving_together_commit_once_and_a_failing_one_alone_is_undone(
    tmp_path: Path,
) -> None:
    batcher, statements = await _batcher(tmp_path)
    try:
        await batcher.call(_insert(0), True)  # alone: a transaction of its own
        statements.clear()
        busy = threading.Event()
        blocker = asyncio.ensure_future(batcher.run(busy.wait))  # the thread is busy...
        calls = asyncio.gather(
            *(batcher.call(_insert(v), True) for v in (1, 2, 0, 3)),  # 0 is taken
            return_exceptions=True,
        )
        await asyncio.sleep(0.05)  # ...while the four arrive
        busy.set()
        await blocker
        results: list[Any] = await calls
        assert results[:2] == [1, 2]
        assert results[3] == 3
        assert isinstance(results[2], sqlite3.IntegrityError)
        assert statements.count("COMMIT") == 1  # one transaction carried the four
        assert statements.count("ROLLBACK TO call") == 1
        assert await _values(batcher) == [0, 1, 2, 3]
    finally:
        batcher.close_db()
        batcher.shutdown()


async def test_a_read_failing_in_a_batch_fails_alone_without_a_savepoint(tmp_path: Path) -> None:
    batcher, statements = await _batcher(tmp_path)
    try:
        statements.clear()
        busy = threading.Event()
        blocker = asyncio.ensure_future(batcher.run(busy.wait))

        def bad_read(db: Db) -> None:
            db.execute("SELECT nope FROM t")

        calls = asyncio.gather(
            batcher.call(_insert(1), True),
            batcher.call(bad_read, False),
            batcher.call(_insert(2), True),
            return_exceptions=True,
        )
        await asyncio.sleep(0.05)
        busy.set()
        await blocker
        results: list[Any] = list(await calls)
        assert results[::2] == [1, 2]
        assert isinstance(results[1], sqlite3.OperationalError)
        assert statements.count("SAVEPOINT call") == 2  # the writes' only
        assert statements.count("COMMIT") == 1
        assert await _values(batcher) == [1, 2]
    finally:
        batcher.close_db()
        batcher.shutdown()


async def test_a_failed_commit_writes_nothing_of_its_batch(tmp_path: Path) -> None:
    batcher, _ = await _batcher(tmp_path)
    try:

        def defer(db: Db) -> None:  # a constraint checked only at COMMIT
            db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
            db.execute(
                "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
            )
            db.execute("PRAGMA foreign_keys = ON")

        await batcher.run(lambda: defer(batcher.db))  # type: ignore[arg-type]

        def orphan(db: Db) -> None:
            db.execute("INSERT INTO child (p) VALUES (42)")

        results = await asyncio.gather(
            batcher.call(_insert(7), True), batcher.call(orphan, True), return_exceptions=True
        )
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
        assert await _values(batcher) == []
    finally:
        batcher.close_db()
        batcher.shutdown()


async def test_many_concurrent_turns_on_one_conversation_are_each_kept_once(
    tmp_path: Path,
) -> None:
    store = SqliteStore(str(tmp_path / "s.sqlite3"))
    await store.open()
    try:
        snapshot = await store.load("c", "t")
        turns = [
            store.append(
                "c",
                "t",
                [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                epoch=snapshot.epoch,
                turn=f"turn-{i}",
            )
            for i in range(20)
        ]
        await asyncio.gather(*turns)
        stored = [m.message["content"] for m in (await store.load("c", "t")).messages]
        assert len(stored) == 40
        for i in range(20):  # each turn once, its two messages together
            at = stored.index(f"q{i}")
            assert stored[at + 1] == f"a{i}"
            assert stored.count(f"q{i}") == 1
    finally:
        await store.close()


async def test_a_call_on_a_closed_store_fails_clearly(tmp_path: Path) -> None:
    batcher, _ = await _batcher(tmp_path)
    batcher.close_db()
    with pytest.raises(RuntimeError, match="not open"):
        await batcher.call(_insert(1), True)
    batcher.shutdown()
