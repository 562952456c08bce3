"""The SQLite store's one thread and its group commit.

Every store call is a function of the connection, run on a thread of its own so that the
event loop never waits on the disk. Calls that arrive while the thread is busy are not run
one transaction each: the thread takes all that are waiting (up to ``MAX_BATCH``) and runs
them in order in one transaction, each inside a savepoint, so that

- each call is still atomic: one that raises is rolled back to its savepoint alone, and the
  caller gets its exception; the others are kept (a call that only reads needs no savepoint);
- each sees what the calls before it did, exactly as if they had run one after the other;
- the batch is committed once: it costs one ``COMMIT`` (the WAL write) and one wake-up of the
  event loop, where it cost one each per call. If that commit fails, nothing of the batch was
  written and every call of it gets the error.

Under load this is group commit: at 32 concurrent turns, a commit carries several of them.
A call alone in its batch is a transaction by itself, as before.

A call that keeps something outside the database along with what it writes (the store's
decoded conversations) registers how to forget it with ``undo``: it runs if what the call
wrote is rolled back, alone or with its batch.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
Db = sqlite3.Connection
MAX_BATCH = 64  # calls a transaction may carry (bounds the wait of the last one)


@dataclass(slots=True)
class _Call:
    fn: Callable[[Db], Any]
    write: bool
    future: asyncio.Future[Any]
    result: Any = None
    error: BaseException | None = None


class Batcher:
    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="palaver-sqlite")
        self._lock = threading.Lock()
        self._waiting: list[_Call] = []
        self._draining = False  # a drain is queued or running on the thread
        self._undo: list[Callable[[], None]] = []  # of the batch's calls so far
        self.db: Db | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the thread, outside any batch (opening, closing)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def call(self, fn: Callable[[Db], T], write: bool) -> T:
        """``fn(db)`` atomically, in the next transaction the thread runs."""
        loop = asyncio.get_running_loop()
        call = _Call(fn, write, loop.create_future())
        with self._lock:
            self._waiting.append(call)
            start = not self._draining
            self._draining = True
        if start:
            self._thread.submit(self._drain, loop)
        result: T = await call.future
        return result

    def undo(self, hook: Callable[[], None]) -> None:
        """On the thread, within a call: run ``hook`` if what the call wrote is rolled back."""
        self._undo.append(hook)

    def close_db(self) -> None:
        db, self.db = self.db, None
        if db is not None:
            db.close()

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)

    # -- on the thread ---------------------------------------------------------------------------

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                if not batch:
                    self._draining = False
                    return
            self._transaction(batch)
            try:
                loop.call_soon_threadsafe(_settle, batch)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return

    def _transaction(self, batch: list[_Call]) -> None:
        db = self.db
        if db is None:
            for call in batch:
                call.error = RuntimeError("the SQLite store is not open")
            return
        alone = len(batch) == 1
        try:
            db.execute("BEGIN IMMEDIATE" if any(c.write for c in batch) else "BEGIN")
        except Exception as exc:
            for call in batch:
                call.error = exc
            return
        undo = self._undo
        try:
            for call in batch:
                if alone:
                    call.result = call.fn(db)
                    continue
                if not call.write:  # it writes nothing: no savepoint to roll back to
                    try:
                        call.result = call.fn(db)
                    except Exception as exc:
                        call.error = exc
                    continue
                db.execute("SAVEPOINT call")
                before = len(undo)
                try:
                    call.result = call.fn(db)
                except Exception as exc:
                    db.execute("ROLLBACK TO call")
                    call.error = exc
                    _run(undo[before:])
                    del undo[before:]
                db.execute("RELEASE call")
            db.execute("COMMIT")
        except Exception as exc:  # the call alone raised, or the commit failed: nothing written
            if db.in_transaction:
                db.execute("ROLLBACK")
            _run(undo)
            for call in batch:
                call.result, call.error = None, exc
        finally:
            undo.clear()


def _run(hooks: list[Callable[[], None]]) -> None:
    for hook in reversed(hooks):
        hook()


def _settle(batch: list[_Call]) -> None:
    for call in batch:
        if call.future.cancelled():
            continue
        if call.error is not None:
            call.future.set_exception(call.error)
        else:
            call.future.set_result(call.result)
