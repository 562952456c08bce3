"""Conversations stored by palaver 0.1 (ids global) keep working after the upgrade."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson
import redis.asyncio as aioredis

from palaver.redis_link import RedisLink
from palaver.stores import RedisStore, SqliteStore
from palaver.stores.sqlite_schema import VERSION, migrate
from tests.conftest import redis_url_or_skip

# The schema palaver 0.1 wrote (user_version 0).
V1_SCHEMA = """
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

TURNS = {
    "trip-plan": ("a1b2c3d4e5f60718", ["My name is Ada", "Hello Ada"]),
    "other": ("", ["anonymous"]),
}


def write_v1(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    now = time.time()
    for conversation_id, (tenant, texts) in TURNS.items():
        db.execute(
            "INSERT INTO conversations VALUES (?, ?, ?, ?, ?, ?)",
            (conversation_id, tenant, now - 10, now - 5, len(texts), '{"topic": "old"}'),
        )
        for n, text in enumerate(texts):
            role = "user" if n % 2 == 0 else "assistant"
            db.execute(
                "INSERT INTO messages (conversation_id, item_id, created_at, body)"
                " VALUES (?, ?, ?, ?)",
                (
                    conversation_id,
                    f"msg_{conversation_id}{n}",
                    now,
                    orjson.dumps({"role": role, "content": text}).decode(),
                ),
            )
    db.commit()
    db.close()


async def test_sqlite_file_of_palaver_0_1_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    write_v1(path)
    store = SqliteStore(str(path))
    await store.open()
    try:
        for conversation_id, (tenant, texts) in TURNS.items():
            snapshot = await store.load(conversation_id, tenant)
            assert snapshot.info is not None
            assert snapshot.info.metadata == {"topic": "old"}
            assert snapshot.info.epoch == 1
            assert [s.message["content"] for s in snapshot.messages] == texts
            assert snapshot.messages[0].item_id == f"msg_{conversation_id}0"
        assert (await store.load("trip-plan", "another-key")).info is None
        info = await store.append(
            "trip-plan", "a1b2c3d4e5f60718", [{"role": "user", "content": "again"}], epoch=1
        )
        assert info.message_count == 3
        listed, _ = await store.list("a1b2c3d4e5f60718", 10, None)
        assert [i.id for i in listed] == ["trip-plan"]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION
    assert migrate(db) == VERSION  # opening again migrates nothing
    db.close()


async def test_redis_layout_of_palaver_0_1_is_moved(redis_prefix: str) -> None:
    url = redis_url_or_skip()
    raw = aioredis.Redis.from_url(url)
    now = time.time()
    p = redis_prefix
    for conversation_id, (tenant, texts) in TURNS.items():
        await raw.hset(
            f"{p}{{c:{conversation_id}}}:meta",
            mapping={
                "tenant": tenant,
                "created_at": repr(now - 10),
                "updated_at": repr(now - 5),
                "count": len(texts),
                "metadata": '{"topic": "old"}',
            },
        )
        messages = [
            {"role": "user", "content": texts[0]},
            *(
                {
                    "role": "assistant",
                    "content": t,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                }
                for t in texts[1:]
            ),
        ]
        await raw.rpush(
            f"{p}{{c:{conversation_id}}}:msgs",
            *(orjson.dumps({"i": f"msg_{n}", "t": now, "m": m}) for n, m in enumerate(messages)),
        )
        await raw.zadd(f"{p}{{i}}:lru", {conversation_id: now - 5})
        await raw.zadd(f"{p}{{i}}:t:{tenant or '-'}", {conversation_id: now - 10})
    link = RedisLink(url, p)
    store = RedisStore(link)
    try:
        await store.open()
        for conversation_id, (tenant, texts) in TURNS.items():
            snapshot = await store.load(conversation_id, tenant)
            assert snapshot.info is not None
            assert snapshot.info.metadata == {"topic": "old"}
            assert [s.message["content"] for s in snapshot.messages] == texts
        listed, _ = await store.list("a1b2c3d4e5f60718", 10, None)
        assert [i.id for i in listed] == ["trip-plan"]
        old = [k async for k in raw.scan_iter(match=f"{p}{{[ci]}}*")]
        assert old == []
        shapes = await raw.lrange(f"{p}{{conv}}:s:a1b2c3d4e5f60718:trip-plan", 0, -1)
        assert shapes == [b'["u"]', b'["a","call_1"]']
        await store.open()  # a second start moves nothing and loses nothing
        assert len((await store.load("other", "")).messages) == 1
    finally:
        await link.close()
        await raw.aclose()


async def test_sqlite_file_of_schema_2_gains_token_counts(tmp_path: Path) -> None:
    """A file written before counts were kept (schema 2): its messages load without counts
    (palaver counts them when it needs to), new ones keep theirs, and a v1 file goes all the
    way to the current version."""
    from palaver.stores.sqlite_schema import TABLES

    path = tmp_path / "v2.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        TABLES  # noqa: S608 - the test's own schema
        + """
        CREATE TABLE messages (
            seq INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL,
            conversation_id TEXT NOT NULL, item_id TEXT NOT NULL,
            created_at REAL NOT NULL, body TEXT NOT NULL);
        CREATE INDEX messages_by_conversation ON messages (tenant, conversation_id, seq);
        INSERT INTO conversations (tenant, id, created_at, updated_at, message_count)
            VALUES ('k', 'old', 1, 1, 1);
        INSERT INTO messages (tenant, conversation_id, item_id, created_at, body)
            VALUES ('k', 'old', 'msg_old', 1, '{"role": "user", "content": "hi"}');
        PRAGMA user_version = 2;
        """
    )
    db.close()
    store = SqliteStore(str(path))
    await store.open()
    try:
        snapshot = await store.load("old", "k")
        assert [(s.message["content"], s.tokens) for s in snapshot.messages] == [("hi", None)]
        reply = {"role": "assistant", "content": "hello"}
        await store.append("old", "k", [reply], epoch=1, counts=[{"o200k_base": 9}])
        snapshot = await store.load("old", "k")
        assert [s.tokens for s in snapshot.messages] == [None, {"o200k_base": 9}]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == VERSION == 3
    db.close()
    v1 = tmp_path / "v1.sqlite3"
    write_v1(v1)
    store = SqliteStore(str(v1))
    await store.open()
    try:
        await store.append("other", "", [reply], epoch=1, counts=[{"cl100k_base": 4}])
        assert (await store.load("other", "")).messages[-1].tokens == {"cl100k_base": 4}
    finally:
        await store.close()
