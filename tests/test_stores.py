"""One contract suite for every conversation store backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from palaver.redis_link import RedisLink
from palaver.stores import (
    AlreadyExists,
    ConversationStore,
    Gone,
    Limits,
    MemoryStore,
    RedisStore,
    SqliteStore,
)
from tests.conftest import redis_url_or_skip

Message = dict[str, Any]
MakeStore = Callable[[Limits], Awaitable[ConversationStore]]


def user(text: str) -> Message:
    return {"role": "user", "content": text}


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeStore]:
    """Builds stores of one backend (with the limits a test wants) and closes them after."""
    made: list[ConversationStore] = []
    links: list[RedisLink] = []

    async def make(limits: Limits) -> ConversationStore:
        store: ConversationStore
        if request.param == "memory":
            store = MemoryStore(limits)
        elif request.param == "redis":
            link = RedisLink(redis_url_or_skip(), request.getfixturevalue("redis_prefix"))
            links.append(link)
            redis = RedisStore(link, limits)
            await redis.open()
            store = redis
        else:
            sqlite = SqliteStore(str(tmp_path / "store.sqlite3"), limits)
            await sqlite.open()
            store = sqlite
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
    for link in links:
        await link.close()


@pytest.fixture
async def store(make_store: MakeStore) -> ConversationStore:
    return await make_store(Limits(max_messages=100))


async def texts(store: ConversationStore, conversation_id: str, tenant: str = "t") -> list[str]:
    snapshot = await store.load(conversation_id, tenant)
    return [s.message["content"] for s in snapshot.messages]


async def test_append_creates_and_loads_in_order(store: ConversationStore) -> None:
    snapshot = await store.load("c1", "t")
    assert (snapshot.info, snapshot.messages, snapshot.epoch) == (None, [], 1)
    info = await store.append("c1", "t", [user("a"), user("b")], epoch=1)
    assert (info.id, info.tenant, info.message_count, info.epoch) == ("c1", "t", 2, 1)
    await store.append("c1", "t", [user("c")], epoch=1)
    snapshot = await store.load("c1", "t")
    assert snapshot.info is not None
    assert [s.message["content"] for s in snapshot.messages] == ["a", "b", "c"]
    assert len({s.item_id for s in snapshot.messages}) == 3
    assert snapshot.info.message_count == 3
    assert snapshot.epoch == 1


async def test_trims_by_priority_in_the_same_step(make_store: MakeStore) -> None:
    store = await make_store(Limits(max_messages=3))
    await store.append("c", "t", [{"role": "system", "content": "rules"}], epoch=1)
    for text in "abcde":
        info = await store.append(
            "c", "t", [user(text), {"role": "assistant", "content": text.upper()}], epoch=1
        )
        assert info.message_count == 3
    # assistant replies go first, then older questions; the system message and the newest
    # question with its answer stay
    assert await texts(store, "c") == ["rules", "e", "E"]


async def test_same_id_in_two_tenants_are_two_conversations(store: ConversationStore) -> None:
    await store.append("trip-plan", "alice", [user("alice's secret")], epoch=1)
    snapshot = await store.load("trip-plan", "bob")
    assert (snapshot.info, snapshot.messages, snapshot.epoch) == (None, [], 1)
    assert await store.delete("trip-plan", "bob") is False
    assert await store.set_metadata("trip-plan", "bob", {"a": "b"}) is None
    await store.append("trip-plan", "bob", [user("bob's own")], epoch=1)
    assert await texts(store, "trip-plan", "alice") == ["alice's secret"]
    assert await texts(store, "trip-plan", "bob") == ["bob's own"]
    assert [i.id for i in (await store.list("bob", 10, None))[0]] == ["trip-plan"]
    assert await store.delete("trip-plan", "bob") is True
    assert await texts(store, "trip-plan", "alice") == ["alice's secret"]


async def test_create_metadata_delete(store: ConversationStore) -> None:
    info = await store.create("c", "t", {"topic": "x"}, [user("hi")])
    assert info.metadata == {"topic": "x"}
    assert info.message_count == 1
    with pytest.raises(AlreadyExists):
        await store.create("c", "t", {}, [])
    updated = await store.set_metadata("c", "t", {"topic": "y"})
    assert updated is not None
    assert updated.metadata == {"topic": "y"}
    assert (await store.load("c", "t")).info == updated
    assert await store.delete("c", "t") is True
    assert await store.delete("c", "t") is False
    assert (await store.load("c", "t")).info is None


async def test_deletion_is_final_for_turns_in_flight(store: ConversationStore) -> None:
    await store.append("c", "t", [user("before")], epoch=1)
    in_flight = (await store.load("c", "t")).epoch  # a turn begins...
    assert await store.delete("c", "t") is True  # ...the conversation is deleted...
    with pytest.raises(Gone):  # ...and the turn cannot bring it back
        await store.append("c", "t", [user("late")], epoch=in_flight)
    assert (await store.load("c", "t")).info is None
    # a turn that began on the id before any conversation existed is refused too
    with pytest.raises(Gone):
        await store.append("c", "t", [user("late")], epoch=1)
    # a new turn after the deletion starts a new conversation under the same id
    fresh = await store.load("c", "t")
    assert (fresh.info, fresh.epoch) == (None, 2)
    info = await store.append("c", "t", [user("new life")], epoch=2)
    assert info.epoch == 2
    assert await texts(store, "c") == ["new life"]


async def test_concurrent_first_turns_both_stored(store: ConversationStore) -> None:
    epochs = [(await store.load("new", "t")).epoch for _ in range(2)]
    await asyncio.gather(*(store.append("new", "t", [user(f"m{n}")], epoch=1) for n in range(2)))
    assert epochs == [1, 1]
    assert sorted(await texts(store, "new")) == ["m0", "m1"]


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
    assert await store.list("t", 2, "no-such") == ([], False)


async def test_least_recently_used_go_first_as_new_ones_come(make_store: MakeStore) -> None:
    store = await make_store(Limits(max_active=3))
    for n in range(3):
        await store.append(f"c{n}", "t", [user("x")], epoch=1)
        await asyncio.sleep(0.002)
    await store.append("c0", "t", [user("again")], epoch=1)  # c0 is now the most recent
    await asyncio.sleep(0.002)
    await store.append("c3", "t", [user("x")], epoch=1)  # one too many: c1 goes
    assert (await store.load("c1", "t")).info is None
    assert [i.id for i in (await store.list("t", 10, None))[0]] == ["c3", "c2", "c0"]
    # an evicted conversation is deleted like any other: a turn begun before cannot revive it
    with pytest.raises(Gone):
        await store.append("c1", "t", [user("late")], epoch=1)


async def test_idle_ttl(make_store: MakeStore) -> None:
    store = await make_store(Limits(idle_ttl=0.05))
    await store.append("old", "t", [user("x")], epoch=1)
    await store.append("gone", "t", [user("x")], epoch=1)
    await asyncio.sleep(0.08)
    await store.append("new", "t", [user("y")], epoch=1)
    assert await store.enforce_limits() == 2
    assert (await store.load("old", "t")).info is None
    assert (await store.load("new", "t")).info is not None
    await asyncio.sleep(0.08)
    assert (await store.load("new", "t")).info is None  # a load removes an idle one too


async def test_concurrent_appends_lose_nothing(store: ConversationStore) -> None:
    await asyncio.gather(
        *(store.append("c", "t", [user(f"q{n}"), user(f"a{n}")], epoch=1) for n in range(20))
    )
    got = await texts(store, "c")
    assert len(got) == 40
    for n in range(20):  # each turn's messages stay together
        assert got.index(f"a{n}") == got.index(f"q{n}") + 1


async def test_sqlite_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "reopen.sqlite3")
    first = SqliteStore(path)
    await first.open()
    await first.append("c", "t", [user("remember me")], epoch=1)
    await first.delete("c", "t")
    await first.append("d", "t", [user("remember me")], epoch=1)
    await first.close()
    second = SqliteStore(path)
    await second.open()
    kept = await second.load("d", "t")
    deleted = await second.load("c", "t")
    await second.close()
    assert [s.message for s in kept.messages] == [user("remember me")]
    assert (deleted.info, deleted.epoch) == (None, 2)  # the tombstone survived too


async def test_sqlite_two_connections_share_one_file(tmp_path: Path) -> None:
    """As two worker processes would: two stores on one file, writing at once."""
    path = str(tmp_path / "shared.sqlite3")
    a, b = SqliteStore(path), SqliteStore(path)
    await a.open()
    await b.open()
    await asyncio.gather(
        *((a if n % 2 else b).append("c", "t", [user(f"m{n}")], epoch=1) for n in range(30))
    )
    got = await texts(a, "c")
    await a.close()
    await b.close()
    assert sorted(got) == sorted(f"m{n}" for n in range(30))


async def test_token_counts_are_kept_with_their_messages(store: ConversationStore) -> None:
    """Each message's prompt tokens are stored with it (CONTRACT §5: a turn never re-counts
    the whole history); messages stored without counts load without them."""
    await store.append("c1", "t", [user("a")], epoch=1)
    await store.append(
        "c1",
        "t",
        [user("b"), {"role": "assistant", "content": "c"}],
        epoch=1,
        counts=[{"o200k_base": 7}, {"o200k_base": 5, "cl100k_base": 6}],
    )
    snapshot = await store.load("c1", "t")
    assert [s.tokens for s in snapshot.messages] == [
        None,
        {"o200k_base": 7},
        {"o200k_base": 5, "cl100k_base": 6},
    ]
