"""The Redis link and store under faults: pool exhaustion, stalls, lost replies, retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis as sync_redis
from hypothesis import given, settings
from hypothesis import strategies as st

from palaver import redis_link
from palaver.conversations.priority import keep
from palaver.errors import ServiceUnavailable
from palaver.redis_link import RedisBusy, RedisDown, RedisLink
from palaver.stores import Limits, RedisStore, new_turn_id
from palaver.stores import redis as redis_store
from palaver.stores.redis import shape
from palaver.stores.redis_scripts import DROP
from tests.conftest import redis_url_or_skip
from tests.servers import free_port
from tests.test_redis import private_redis

Message = dict[str, Any]


def user(text: str) -> Message:
    return {"role": "user", "content": text}


@asynccontextmanager
async def _private_link(port: int, prefix: str) -> AsyncIterator[tuple[RedisLink, Any]]:
    """A link to the private Redis on ``port`` and an admin client to it; both closed after."""
    link = RedisLink(f"redis://127.0.0.1:{port}/0", prefix)
    admin = sync_redis.Redis(port=port)
    try:
        yield link, admin
    finally:
        admin.close()
        await link.close()


@pytest.fixture
async def link(redis_prefix: str) -> AsyncIterator[RedisLink]:
    made = RedisLink(redis_url_or_skip(), redis_prefix)
    yield made
    await made.close()


# --- trimming in Lua is palaver.conversations.priority.keep ---------------------------------

_IDS = st.sampled_from(["c1", "c2", "c3"])
_MESSAGES = st.one_of(
    st.just({"role": "system", "content": "s"}),
    st.just({"role": "developer", "content": "d"}),
    st.just(user("u")),
    st.just({"role": "assistant", "content": "a"}),
    st.lists(_IDS, min_size=1, max_size=2).map(
        lambda ids: {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                for i in ids
            ],
        }
    ),
    _IDS.map(lambda i: {"role": "tool", "tool_call_id": i, "content": "r"}),
)


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(_MESSAGES, max_size=14), limit=st.integers(min_value=1, max_value=12))
def test_lua_trim_is_the_priority_rule(messages: list[Message], limit: int) -> None:
    client = sync_redis.Redis.from_url(redis_url_or_skip())
    try:
        dropped = client.eval(DROP, 0, "p:", limit, *(shape(m) for m in messages))
    finally:
        client.close()
    expected = keep(messages, limit)
    if len(messages) <= limit:
        return  # the script is only asked to drop when there are too many
    assert [i for i in range(len(messages)) if i + 1 not in set(dropped)] == expected


# --- the pool ---------------------------------------------------------------------------------


async def test_pool_exhaustion_waits_and_is_no_outage(redis_prefix: str) -> None:
    link = RedisLink(redis_url_or_skip(), redis_prefix, max_connections=4, pool_timeout=5)
    try:
        key = redis_prefix + "n"
        await asyncio.gather(*(link.run(lambda r: r.incr(key)) for _ in range(500)))
        assert await link.run(lambda r: r.get(key)) == b"500"
        assert not link.down
    finally:
        await link.close()


async def test_an_exhausted_pool_fails_the_call_not_the_link(redis_prefix: str) -> None:
    link = RedisLink(redis_url_or_skip(), redis_prefix, max_connections=1, pool_timeout=0.1)
    try:
        pool = link.client.connection_pool
        held = await pool.get_connection()  # type: ignore[no-untyped-call]  # another request of this process holds the only one
        with pytest.raises(RedisBusy):
            await link.run(lambda r: r.ping())
        assert not link.down  # local load is not an outage
        await pool.release(held)
        assert await link.run(lambda r: r.ping())
    finally:
        await link.close()


async def test_a_waiter_gets_the_connection_given_back(redis_prefix: str) -> None:
    """Given back while someone waits, a connection goes to the waiter (redis-py's path
    notifies it), not to the idle list where the waiter would never look."""
    link = RedisLink(redis_url_or_skip(), redis_prefix, max_connections=1, pool_timeout=2)
    try:
        pool = link.client.connection_pool
        held = await pool.get_connection()  # type: ignore[no-untyped-call]
        waiter = asyncio.create_task(link.run(lambda r: r.ping()))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        await pool.release(held)
        assert await waiter
        assert time.monotonic() - started < 0.5  # served at once, not at pool_timeout
    finally:
        await link.close()


async def test_an_idle_connection_is_checked_before_it_is_lent(redis_prefix: str) -> None:
    """A connection given back with a reply left unread, or closed by Redis while idle, is
    reconnected before its next borrower uses it: the borrower reads its own reply, and the
    breaker does not trip."""
    link = RedisLink(redis_url_or_skip(), redis_prefix, max_connections=1)
    try:
        pool = link.client.connection_pool
        key = redis_prefix + "k"
        await link.run(lambda r: r.set(key, b"value"))
        dirty = await pool.get_connection()  # type: ignore[no-untyped-call]
        await dirty.send_command("ECHO", "left unread")
        await asyncio.sleep(0.05)  # the reply is in the connection's buffer
        await pool.release(dirty)
        assert await link.run(lambda r: r.get(key)) == b"value"

        own = await pool.get_connection()  # type: ignore[no-untyped-call]
        await own.send_command("CLIENT", "ID")
        client_id = await own.read_response()
        await pool.release(own)
        admin = sync_redis.Redis.from_url(redis_url_or_skip())
        try:
            assert admin.client_kill_filter(_id=client_id) == 1  # only this connection
        finally:
            admin.close()
        await asyncio.sleep(0.05)  # its end of stream arrives while it is idle
        assert await link.run(lambda r: r.get(key)) == b"value"
        assert not link.down
    finally:
        await link.close()


async def test_a_new_connection_costs_no_setup_commands(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No CLIENT SETINFO on connect: a burst on a cold pool opens one connection a request,
    and those two commands were two thirds of what a new connection cost (Redis before 7.2
    answers them with an error, which redis-py ignores)."""
    sent: list[tuple[Any, ...]] = []
    original = redis_link._Connection.send_command

    async def recording(self: Any, *args: Any, **kwargs: Any) -> None:
        sent.append(args)
        await original(self, *args, **kwargs)

    monkeypatch.setattr(redis_link._Connection, "send_command", recording)
    link = RedisLink(redis_url_or_skip(), redis_prefix)
    try:
        assert await link.run(lambda r: r.ping())
        assert ("PING",) in sent  # the connection was made, and its setup went by here
        assert not [args for args in sent if args[:2] == ("CLIENT", "SETINFO")]
    finally:
        await link.close()


# --- timeouts are real and nothing is repeated behind our back -----------------------------


async def test_a_stalled_command_times_out_once_at_half_a_second() -> None:
    redis_url_or_skip()
    port = free_port()
    with private_redis(port):
        async with _private_link(port, "stall:") as (link, admin):
            assert await link.run(lambda r: r.ping())
            stall = asyncio.create_task(asyncio.to_thread(admin.execute_command, "DEBUG SLEEP 1.5"))
            await asyncio.sleep(0.1)
            started = time.monotonic()
            with pytest.raises(RedisDown):
                await link.run(lambda r: r.incr("counter"))
            took = time.monotonic() - started
            await stall
            assert 0.4 < took < 0.8, took  # one 0.5 s timeout, not one per silent retry
            assert admin.get("counter") == b"1"  # sent once: redis-py retried nothing


# --- Redis forgot the scripts (restarted, or SCRIPT FLUSH): they are sent again -------------


async def test_reads_and_writes_survive_a_script_flush() -> None:
    redis_url_or_skip()
    port = free_port()
    with private_redis(port):
        async with _private_link(port, "flush:") as (link, admin):
            store = RedisStore(link)
            first = await store.append("c", "t", [user("q1"), user("a1")], epoch=1)
            admin.script_flush()
            snapshot = await store.load("c", "t")  # the read script, unknown again: resent
            assert [m.message["content"] for m in snapshot.messages] == ["q1", "a1"]
            admin.script_flush()
            turn = new_turn_id()
            await store.append("c", "t", [user("q2"), user("a2")], epoch=first.epoch, turn=turn)
            again = await store.load("c", "t")
            assert [m.message["content"] for m in again.messages] == ["q1", "a1", "q2", "a2"]
            assert again.info is not None
            assert again.info.message_count == 4


# --- an append is applied exactly once or not at all ------------------------------------------


async def test_a_repeated_append_is_applied_once(link: RedisLink) -> None:
    store = RedisStore(link)
    turn = new_turn_id()
    first = await store.append("c", "t", [user("q"), user("a")], epoch=1, turn=turn)
    again = await store.append("c", "t", [user("q"), user("a")], epoch=1, turn=turn)
    assert first.message_count == again.message_count == 2
    assert len((await store.load("c", "t")).messages) == 2


async def test_an_append_that_arrives_after_its_deadline_does_nothing(
    link: RedisLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(link)
    monkeypatch.setattr(redis_store, "COMMIT_WINDOW", -1.0)
    with pytest.raises(ServiceUnavailable):
        await store.append("c", "t", [user("too late")], epoch=1)
    assert (await store.load("c", "t")).info is None


async def test_append_during_a_stall_is_stored_once_or_not_at_all() -> None:
    """Appends sent while Redis sleeps: those that report success are stored once, those that
    report failure are not stored, whichever way the stall ends."""
    redis_url_or_skip()
    port = free_port()
    with private_redis(port):
        for stall in (0.8, 2.5):  # shorter than the commit window, then longer
            async with _private_link(port, f"stall{stall}:") as (link, admin):
                store = RedisStore(link, Limits(max_messages=1000))
                await store.append("c", "t", [user("seed")], epoch=1)
                sleeper = asyncio.create_task(
                    asyncio.to_thread(admin.execute_command, f"DEBUG SLEEP {stall}")
                )
                await asyncio.sleep(0.05)

                async def turn(n: int, store: RedisStore = store) -> bool:
                    try:
                        await store.append("c", "t", [user(f"q{n}")], epoch=1)
                    except ServiceUnavailable:
                        return False
                    return True

                results = await asyncio.gather(*(turn(n) for n in range(20)))
                await sleeper
                await asyncio.sleep(0.3)  # anything still queued in Redis has run by now
                await asyncio.sleep(1.0)  # and the breaker lets calls through again
                assert not link.down
                stored = [s.message["content"] for s in (await store.load("c", "t")).messages]
                for n, ok in enumerate(results):
                    assert stored.count(f"q{n}") == (1 if ok else 0), (stall, n, ok, stored)
                if stall < 1:  # the append sent just before the stall lost its reply, and
                    assert results[0]  # learnt from a repeat that Redis had applied it
                else:
                    assert not any(results)  # every copy reached Redis after its deadline
