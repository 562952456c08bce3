"""The SQLite store's recently used conversations, kept decoded, and how it knows them fresh.

A turn reads a conversation's messages, and its append (past ``max_messages``) reads them again
to trim them: each read selects and parses every row. The store keeps the messages it last read
or wrote of a conversation, with the rows' ``seq``, under the conversation's *version*: its
epoch, the largest ``seq`` among its messages and their count. ``seq`` only grows
(``AUTOINCREMENT`` never reuses one), so a write that inserts a message changes the version,
and one that only deletes some changes the count: every change by any process sharing the
file changes it. A read compares the version it finds in the database, one indexed
lookup in the statement that finds the conversation, with the one kept: equal, the kept
messages are the rows; different, it reads the rows and keeps them instead.

An entry is made inside the transaction that read or wrote those rows, before it commits:
the calls after it in the batch see the same database. If what the call wrote is rolled
back, its entries are forgotten (``Batcher.undo``) so no entry names a version that was never
committed. Only the store's thread touches it; it holds at most ``MAX_BYTES`` of messages
(their JSON, with an allowance for each message's objects), least recently used out first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from palaver.stores.base import StoredMessage

Key = tuple[str, str]  # (tenant, id)
Version = tuple[int, int, int]  # the epoch, the largest seq and the count of its messages
MAX_BYTES = 32 * 1024 * 1024
PER_MESSAGE = 512  # the objects of a decoded message beyond its JSON's length
UNSET: Version = (0, 0, 0)  # rows still being changed: their version is set when they are kept


def size(body: str, tokens: str | None) -> int:
    """What one message counts against ``MAX_BYTES``, from its stored JSON."""
    return len(body) + len(tokens or "") + PER_MESSAGE


@dataclass(slots=True)
class Rows:
    """A conversation's messages, oldest first, and their seqs."""

    version: Version
    seqs: list[int]
    messages: list[StoredMessage]
    size: int  # what it counts against MAX_BYTES


class Recent:
    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self._entries: OrderedDict[Key, Rows] = OrderedDict()  # least recently used first
        self._max_bytes = max_bytes
        self.size = 0

    def get(self, key: Key, version: Version) -> Rows | None:
        """The messages kept for ``key`` if they are of ``version``."""
        rows = self._entries.get(key)
        if rows is None:
            return None
        if rows.version != version:
            self.forget(key)
            return None
        self._entries.move_to_end(key)
        return rows

    def put(self, key: Key, rows: Rows) -> None:
        self.forget(key)
        if rows.size > self._max_bytes:
            return
        self._entries[key] = rows
        self.size += rows.size
        while self.size > self._max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.size -= oldest.size

    def forget(self, key: Key) -> None:
        rows = self._entries.pop(key, None)
        if rows is not None:
            self.size -= rows.size
