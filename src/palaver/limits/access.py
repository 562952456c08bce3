"""A request's key and limits, from authentication to the end of its response.

``Gate.enter`` admits a request of a limited key (or refuses it with 429) and gives the
``x-ratelimit-*`` headers its response carries; ``Pass.record`` counts an answer's real usage
against ``tpm``; ``Pass.leave`` frees its ``max_parallel`` slot when the response is over.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from palaver import ids
from palaver.asgi import Scope
from palaver.limits.keys import OPEN, Key
from palaver.limits.window import Headers, RateLimited, Usage, headers
from palaver.observability import metrics

log = logging.getLogger("palaver.limits")
SCOPE_KEY = "palaver.key"
SCOPE_PASS = "palaver.admitted"  # noqa: S105 - a scope key, not a secret


class Limiter(Protocol):
    async def admit(self, key: Key, request_id: str, count: bool = True) -> Usage | None: ...

    async def release(self, key: Key, request_id: str) -> None: ...

    async def record(self, key: Key, tokens: int) -> None: ...

    async def close(self) -> None: ...


def key_of(scope: Scope) -> Key:
    found: Key | None = scope.get(SCOPE_KEY)
    return OPEN if found is None else found


def usage_tokens(usage: Any) -> int:
    """Prompt plus completion tokens of a chat, Responses or embeddings ``usage``."""
    if not isinstance(usage, dict):
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens")]
    parts.append(usage.get("output_tokens"))
    return sum(p for p in parts if isinstance(p, int))


class Pass:
    """One admitted request of a limited key."""

    __slots__ = ("_counted", "_limiter", "headers", "key", "request_id")

    def __init__(self, key: Key, limiter: Limiter, request_id: str, counted: bool) -> None:
        self.key = key
        self.request_id = request_id
        self.headers: Headers = []
        self._limiter = limiter
        self._counted = counted

    async def record(self, usage: Any) -> None:
        tokens = usage_tokens(usage)
        if tokens and self.key.tpm:
            await self._limiter.record(self.key, tokens)

    async def leave(self) -> None:
        if self._counted and self.key.max_parallel:
            await self._limiter.release(self.key, self.request_id)


class Gate:
    def __init__(self, limiter: Limiter) -> None:
        self.limiter = limiter

    async def enter(self, scope: Scope, key: Key, counted: bool) -> Pass | None:
        """Admit a request of ``key`` (``counted``: one that calls a model; others only read
        the key's use for the headers). Raises ``RateLimited``."""
        if not key.limited:
            return None
        request_id = ids.token_hex(8)
        try:
            usage = await self.limiter.admit(key, request_id, counted)
        except RateLimited as refused:
            metrics.rate_limited(key.name, refused.limit)
            raise
        if usage is None and counted:
            metrics.rate_limited(key.name, "unavailable")
        admitted = Pass(key, self.limiter, request_id, counted)
        if usage is not None:
            admitted.headers = headers(key, usage)
        scope[SCOPE_PASS] = admitted
        return admitted


def pass_of(scope: Scope) -> Pass | None:
    found: Pass | None = scope.get(SCOPE_PASS)
    return found
