"""Limits per process: a sliding window of the last minute's requests and tokens per key,
and a count of its requests in flight."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from palaver.limits.keys import Key
from palaver.limits.window import Usage, refusal


@dataclass(slots=True)
class _State:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    token_sum: int = 0
    in_flight: set[str] = field(default_factory=set)


class MemoryLimiter:
    available = True

    def __init__(self, window: float = 60.0) -> None:
        self._window = window
        self._states: dict[str, _State] = {}

    def _state(self, key: Key, now: float) -> _State:
        state = self._states.get(key.name)
        if state is None:
            state = self._states[key.name] = _State()
        edge = now - self._window
        while state.requests and state.requests[0] <= edge:
            state.requests.popleft()
        while state.tokens and state.tokens[0][0] <= edge:
            state.token_sum -= state.tokens.popleft()[1]
        return state

    def _usage(self, state: _State, now: float) -> Usage:
        return Usage(
            requests=len(state.requests),
            tokens=state.token_sum,
            requests_reset=state.requests[0] + self._window - now if state.requests else 0.0,
            tokens_reset=state.tokens[0][0] + self._window - now if state.tokens else 0.0,
            in_flight=len(state.in_flight),
        )

    async def admit(self, key: Key, request_id: str, count: bool = True) -> Usage:
        """Count the request in (``count``; else only read the key's use), or raise
        ``RateLimited`` naming the limit it is over."""
        now = time.monotonic()
        state = self._state(key, now)
        usage = self._usage(state, now)
        if not count:
            return usage
        if key.max_parallel and usage.in_flight >= key.max_parallel:
            raise refusal(key, "max_parallel", usage)
        if key.rpm and usage.requests >= key.rpm:
            raise refusal(key, "rpm", usage)
        if key.tpm and usage.tokens >= key.tpm:
            raise refusal(key, "tpm", usage)
        if key.rpm:
            state.requests.append(now)
        if key.max_parallel:
            state.in_flight.add(request_id)
        return self._usage(state, now)

    async def release(self, key: Key, request_id: str) -> None:
        state = self._states.get(key.name)
        if state is not None:
            state.in_flight.discard(request_id)

    async def record(self, key: Key, tokens: int) -> None:
        if not key.tpm or tokens <= 0:
            return
        now = time.monotonic()
        state = self._state(key, now)
        state.tokens.append((now, tokens))
        state.token_sum += tokens

    async def close(self) -> None:
        self._states.clear()
