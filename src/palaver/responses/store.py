"""Stored responses: the record, the protocol every backend implements, the memory backend.

A stored response is one record, written in one step: the response object as it was answered,
its own input items, and the *context*, the chat messages a continuation starts from (the
chain's earlier inputs and outputs, then this response's input and output, trimmed by
instruction priority; never the instructions, which belong to one response). Continuing a
chain reads one record, however long the chain. A record belongs to its tenant (two keys never
see each other's responses) and lives ``ttl`` seconds. Writing a record again under its id is
harmless, so a write repeated after a lost reply cannot store a response twice.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from palaver.protocol import Json, Message


@dataclass(slots=True)
class StoredResponse:
    id: str
    tenant: str
    response: Json
    input_items: list[Json]
    context: list[Message]
    context_tokens: list[dict[str, int]] | None = None  # each context message's tokens

    def item(self, item_id: str) -> Json | None:
        """The output or input item of this response with id ``item_id``."""
        for item in (*self.response.get("output", ()), *self.input_items):
            if isinstance(item, dict) and item.get("id") == item_id:
                found: Json = item
                return found
        return None

    def to_bytes(self) -> bytes:
        body: Json = {
            "response": self.response,
            "input_items": self.input_items,
            "context": self.context,
        }
        if self.context_tokens is not None:
            body["context_tokens"] = self.context_tokens
        return orjson.dumps(body)

    @classmethod
    def from_bytes(cls, response_id: str, tenant: str, data: bytes | str) -> StoredResponse:
        body: Any = orjson.loads(data)
        return cls(
            response_id,
            tenant,
            body["response"],
            body["input_items"],
            body["context"],
            body.get("context_tokens"),
        )


class ResponseStore(Protocol):
    @property
    def available(self) -> bool: ...

    async def put(self, record: StoredResponse) -> None:
        """Store (or store again) ``record`` for ``ttl`` seconds."""
        ...

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str, tenant: str) -> bool:
        """True if it was there."""
        ...

    async def close(self) -> None: ...


class MemoryResponses:
    """Records in this process, at most ``max_entries`` (the oldest go first)."""

    available = True

    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._records: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()

    async def put(self, record: StoredResponse) -> None:
        key = (record.tenant, record.id)
        self._records[key] = (time.monotonic() + self._ttl, record.to_bytes())
        self._records.move_to_end(key)
        while len(self._records) > self._max:
            self._records.popitem(last=False)

    async def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        found = self._records.get((tenant, response_id))
        if found is None:
            return None
        expires, data = found
        if expires <= time.monotonic():
            del self._records[(tenant, response_id)]
            return None
        return StoredResponse.from_bytes(response_id, tenant, data)

    async def delete(self, response_id: str, tenant: str) -> bool:
        found = self._records.pop((tenant, response_id), None)
        return found is not None and found[0] > time.monotonic()

    async def close(self) -> None:
        self._records.clear()
