"""The SQLite store keeps recently used conversations decoded (``sqlite_cache``): what it gives
back must always be what the file holds, whatever another process sharing the file did, and
whatever was rolled back."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from palaver.stores import Limits, SqliteStore
from palaver.stores.sqlite_batch import Db

Opened = Callable[[int], Any]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


@pytest.fixture
async def opened(tmp_path: Path) -> AsyncIterator[Opened]:
    """Stores on one file, as worker processes sharing it have: each its own connection."""
    stores: list[SqliteStore] = []

    async def open_store(max_messages: int) -> SqliteStore:
        store = SqliteStore(str(tmp_path / "shared.sqlite3"), Limits(max_messages=max_messages))
        await store.open()
        stores.append(store)
        return store

    yield open_store
    for store in stores:
        await store.close()


async def rows(store: SqliteStore) -> list[tuple[str, str, Any]]:
    snapshot = await store.load("c", "t")
    return [(s.item_id, s.message["content"], s.tokens) for s in snapshot.messages]


async def test_what_another_process_wrote_is_seen(opened: Opened) -> None:
    a, b = await opened(6), await opened(6)
    await a.append("c", "t", [user("q1"), assistant("a1")], epoch=1)
    first = await rows(a)  # a now keeps it decoded
    assert [text for _, text, _ in first] == ["q1", "a1"]
    await b.append("c", "t", [user("q2")], epoch=1, counts=[{"o200k_base": 3}])
    seen = await rows(a)
    assert [text for _, text, _ in seen] == ["q1", "a1", "q2"]
    assert seen[2][2] == {"o200k_base": 3}
    assert seen == await rows(await opened(6))  # what a store that kept nothing reads

    # b trims past the cap: the assistant goes first; a sees it gone, then appends on top
    await b.append("c", "t", [assistant("a2"), user("q3"), assistant("a3"), user("q4")], epoch=1)
    assert [text for _, text, _ in await rows(a)] == ["q1", "q2", "a2", "q3", "a3", "q4"]
    await a.append("c", "t", [assistant("a4")], epoch=1)
    expected = ["q1", "q2", "q3", "a3", "q4", "a4"]
    assert [text for _, text, _ in await rows(b)] == expected
    assert [text for _, text, _ in await rows(a)] == expected
    assert await rows(a) == await rows(await opened(6))


async def test_a_trim_that_adds_nothing_is_seen(opened: Opened) -> None:
    """A process with a lower cap trims on an append of no messages: nothing was inserted,
    only deleted, and the others still notice (their count changed)."""
    a, low = await opened(10), await opened(3)
    await a.append("c", "t", [user("q1"), assistant("a1"), user("q2"), assistant("a2")], epoch=1)
    assert len(await rows(a)) == 4
    await low.append("c", "t", [], epoch=1)
    assert [text for _, text, _ in await rows(a)] == ["q1", "q2", "a2"]


async def test_a_rolled_back_write_is_forgotten(opened: Opened) -> None:
    """A turn whose batch fails to commit is not kept decoded: when another process then
    writes the row ids and count that turn would have had, this one reads the other's."""
    a, b = await opened(50), await opened(50)
    await a.append("c", "t", [user("q1")], epoch=1)
    assert len(await rows(a)) == 1
    batcher = a._batcher
    assert batcher.db is not None

    def deferred(db: Db) -> None:  # a constraint checked only at COMMIT
        db.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        db.execute(
            "CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)"
        )
        db.execute("PRAGMA foreign_keys = ON")

    await batcher.run(deferred, batcher.db)

    def orphan(db: Db) -> None:
        db.execute("INSERT INTO child (p) VALUES (42)")

    results = await asyncio.gather(
        a.append("c", "t", [user("lost")], epoch=1),
        batcher.call(orphan, True),
        return_exceptions=True,
    )
    assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
    await b.append("c", "t", [user("kept")], epoch=1)  # the same next seq and count
    assert [text for _, text, _ in await rows(a)] == ["q1", "kept"]


async def test_a_conversation_deleted_and_made_again_is_read_anew(opened: Opened) -> None:
    a, b = await opened(50), await opened(50)
    await a.append("c", "t", [user("old")], epoch=1)
    assert len(await rows(a)) == 1
    assert await b.delete("c", "t")
    await b.append("c", "t", [user("new")], epoch=2)
    snapshot = await a.load("c", "t")
    assert snapshot.epoch == 2
    assert [s.message["content"] for s in snapshot.messages] == ["new"]


async def test_what_a_caller_does_with_its_messages_later_changes_nothing(
    opened: Opened,
) -> None:
    a = await opened(50)
    message = user("as sent")
    await a.append("c", "t", [message], epoch=1)
    message["content"] = "changed after"
    assert [text for _, text, _ in await rows(a)] == ["as sent"]
