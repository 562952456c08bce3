"""The SQLite schema, versioned with ``PRAGMA user_version``, and the migration of older files.

    version 0   a new, empty file
    version 1   (palaver 0.1) conversation ids global: ``conversations.id`` the primary key
    version 2   ids within their tenant: (tenant, id); epochs and tombstones for deletions
    version 3   each message's prompt tokens (``messages.tokens``, JSON by encoding name)

``migrate`` brings any file to the current version in one ``BEGIN IMMEDIATE`` transaction,
so several worker processes opening one old file at once migrate it exactly once.
"""

from __future__ import annotations

import sqlite3

VERSION = 3

TABLES = """
CREATE TABLE conversations (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    message_count INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '{}',
    epoch INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX conversations_by_use ON conversations (updated_at);
CREATE INDEX conversations_by_tenant ON conversations (tenant, created_at, id);
CREATE TABLE tombstones (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    deleted_at REAL NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX tombstones_by_age ON tombstones (deleted_at);
"""

MESSAGES = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL,
    tokens TEXT
);
CREATE INDEX messages_by_conversation ON messages (tenant, conversation_id, seq);
"""

# Version 1 -> 2: conversations get (tenant, id) as their key and an epoch; messages learn
# their conversation's tenant. Every row is kept.
FROM_V1 = [
    "ALTER TABLE conversations RENAME TO conversations_v1",
    "DROP INDEX IF EXISTS conversations_by_use",
    "DROP INDEX IF EXISTS conversations_by_tenant",
    *[s for s in TABLES.split(";") if s.strip()],
    "INSERT INTO conversations (tenant, id, created_at, updated_at, message_count, metadata)"
    " SELECT tenant, id, created_at, updated_at, message_count, metadata FROM conversations_v1",
    "ALTER TABLE messages ADD COLUMN tenant TEXT NOT NULL DEFAULT ''",
    "UPDATE messages SET tenant = COALESCE((SELECT tenant FROM conversations_v1"
    " WHERE conversations_v1.id = messages.conversation_id), '')",
    "DROP INDEX IF EXISTS messages_by_conversation",
    "CREATE INDEX messages_by_conversation ON messages (tenant, conversation_id, seq)",
    "DROP TABLE conversations_v1",
]

# Version 2 -> 3: messages keep their token counts; older ones have none (counted when used).
FROM_V2 = ["ALTER TABLE messages ADD COLUMN tokens TEXT"]


class SchemaTooNew(Exception):
    """The file was written by a newer palaver."""


def _version(db: sqlite3.Connection) -> int:
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if (
        version == 0
        and db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'conversations'"
        ).fetchone()
    ):
        return 1  # palaver 0.1 did not set user_version
    return version


def migrate(db: sqlite3.Connection) -> int:
    """Bring ``db`` (in autocommit mode) to ``VERSION``; returns the version it had."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = _version(db)
        if found > VERSION:
            raise SchemaTooNew(
                f"the conversation file has schema version {found}; this palaver reads {VERSION}"
            )
        statements: list[str] = []
        if found == 0:
            statements = [s for s in (TABLES + MESSAGES).split(";") if s.strip()]
        elif found == 1:
            statements = FROM_V1 + FROM_V2
        elif found == 2:
            statements = FROM_V2
        for statement in statements:
            db.execute(statement)
        db.execute(f"PRAGMA user_version = {VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found
