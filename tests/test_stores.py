"""One contract suite for every conversation store backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from palaver.redis_link import RedisLink
from palaver.stores import (
    AlreadyExists,
    ConversationStore,
    MemoryStore,
    NotOwner,
    RedisStore,
    SqliteStore,
)
from tests.conftest import redis_url_or_skip

Message = dict[str, Any]


def everything(messages: Sequence[Message]) -> list[int]:
    return list(range(len(messages)))


def last(n: int) -> Any:
    return lambda messages: list(range(max(0, len(messages) - n), len(messages)))


def user(text: str) -> Message:
    return {"role": "user", "content": text}


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    made: ConversationStore
    link = None
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        link = RedisLink(redis_url_or_skip(), prefix)
        made = RedisStore(link)
    else:
        sqlite = SqliteStore(str(tmp_path / "store.sqlite3"))
        await sqlite.open()
        made = sqlite
    yield made
    await made.close()
    if link is not None:
        await link.close()


async def test_append_creates_and_loads_in_order(store: ConversationStore) -> None:
    assert await store.load("c1", "t") is None
    info = await store.append("c1", "t", [user("a"), user("b")], everything)
    assert (info.id, info.tenant, info.message_count) == ("c1", "t", 2)
    await store.append("c1", "t", [user("c")], everything)
    loaded = await store.load("c1", "t")
    assert loaded is not None
    assert [s.message["content"] for s in loaded[1]] == ["a", "b", "c"]
    assert len({s.item_id for s in loaded[1]}) == 3
    assert loaded[0].message_count == 3


async def test_select_trims_atomically(store: ConversationStore) -> None:
    for text in "abcde":
        await store.append("c", "t", [user(text)], last(3))
    loaded = await store.load("c", "t")
    assert loaded is not None
    assert [s.message["content"] for s in loaded[1]] == ["c", "d", "e"]
    assert loaded[0].message_count == 3


async def test_tenants_are_isolated(store: ConversationStore) -> None:
    await store.append("c", "alice", [user("secret")], everything)
    with pytest.raises(NotOwner):
        await store.load("c", "bob")
    with pytest.raises(NotOwner):
        await store.append("c", "bob", [user("x")], everything)
    with pytest.raises(NotOwner):
        await store.delete("c", "bob")
    assert (await store.list("bob", 10, None)) == ([], False)
    loaded = await store.load("c", "alice")
    assert loaded is not None
    assert [s.message["content"] for s in loaded[1]] == ["secret"]


async def test_create_metadata_delete(store: ConversationStore) -> None:
    info = await store.create("c", "t", {"topic": "x"}, [user("hi")])
    assert info.metadata == {"topic": "x"}
    assert info.message_count == 1
    with pytest.raises(AlreadyExists):
        await store.create("c", "t", {}, [])
    updated = await store.set_metadata("c", "t", {"topic": "y"})
    assert updated is not None
    assert updated.metadata == {"topic": "y"}
    assert await store.delete("c", "t") is True
    assert await store.delete("c", "t") is False
    assert await store.load("c", "t") is None


async def test_list_newest_first_with_pages(store: ConversationStore) -> None:
    for n in range(5):
        await store.create(f"c{n}", "t", {}, [])
        await asyncio.sleep(0.002)
    await store.create("other", "u", {}, [])
    page, more = await store.list("t", 2, None)
    assert [i.id for i in page] == ["c4", "c3"]
    assert more
    page, more = await store.list("t", 2, "c3")
    assert [i.id for i in page] == ["c2", "c1"]
    assert more
    page, more = await store.list("t", 2, "c1")
    assert [i.id for i in page] == ["c0"]
    assert not more


async def test_least_recently_used_go_first(store: ConversationStore) -> None:
    for n in range(4):
        await store.append(f"c{n}", "t", [user("x")], everything)
        await asyncio.sleep(0.002)
    await store.append("c0", "t", [user("again")], everything)  # c0 is now the most recent
    assert await store.enforce_limits(2, 0) == 2
    assert await store.load("c1", "t") is None
    assert await store.load("c2", "t") is None
    assert await store.load("c0", "t") is not None
    assert await store.load("c3", "t") is not None


async def test_idle_ttl(store: ConversationStore) -> None:
    await store.append("old", "t", [user("x")], everything)
    await asyncio.sleep(0.05)
    await store.append("new", "t", [user("y")], everything)
    assert await store.enforce_limits(100, 0.03) == 1
    assert await store.load("old", "t") is None
    assert await store.load("new", "t") is not None


async def test_concurrent_appends_lose_nothing(store: ConversationStore) -> None:
    await asyncio.gather(
        *(store.append("c", "t", [user(f"q{n}"), user(f"a{n}")], everything) for n in range(20))
    )
    loaded = await store.load("c", "t")
    assert loaded is not None
    texts = [s.message["content"] for s in loaded[1]]
    assert len(texts) == 40
    for n in range(20):  # each turn's messages stay together
        assert texts.index(f"a{n}") == texts.index(f"q{n}") + 1


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "reopen.sqlite3")
    first = SqliteStore(path)
    await first.open()
    await first.append("c", "t", [user("remember me")], everything)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    loaded = await second.load("c", "t")
    await second.close()
    assert loaded is not None
    assert loaded[1][0].message == user("remember me")


async def test_sqlite_two_connections_share_one_file(tmp_path: Path) -> None:
    """As two worker processes would: two stores on one file, writing at once."""
    path = str(tmp_path / "shared.sqlite3")
    a, b = SqliteStore(path), SqliteStore(path)
    await a.open()
    await b.open()
    await asyncio.gather(
        *((a if n % 2 else b).append("c", "t", [user(f"m{n}")], everything) for n in range(30))
    )
    loaded = await a.load("c", "t")
    await a.close()
    await b.close()
    assert loaded is not None
    assert sorted(s.message["content"] for s in loaded[1]) == sorted(f"m{n}" for n in range(30))
