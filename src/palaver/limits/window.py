"""What a limit check answers, OpenAI's rate-limit headers, and the 429 (CONTRACT §11)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from palaver.errors import PalaverError
from palaver.limits.keys import Key

Headers = list[tuple[bytes, bytes]]


def duration(seconds: float) -> str:
    """OpenAI's format for a reset time: ``20ms``, ``6s``, ``1m30s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest}s" if minutes else f"{rest}s"


@dataclass(slots=True)
class Usage:
    """A key's use within the window when a request was checked."""

    requests: int = 0  # admitted in the window, this one included
    tokens: int = 0  # used in the window
    requests_reset: float = 0.0  # seconds until the oldest admitted request leaves the window
    tokens_reset: float = 0.0
    in_flight: int = 0


class RateLimited(PalaverError):
    status = 429
    code = "rate_limit_exceeded"
    limit = ""  # which: "rpm", "tpm" or "max_parallel"


def headers(key: Key, usage: Usage) -> Headers:
    """``x-ratelimit-*`` for a key with limits (the unlimited ones are left out)."""
    out: Headers = []
    if key.rpm:
        out += [
            (b"x-ratelimit-limit-requests", str(key.rpm).encode()),
            (b"x-ratelimit-remaining-requests", str(max(0, key.rpm - usage.requests)).encode()),
            (b"x-ratelimit-reset-requests", duration(usage.requests_reset).encode()),
        ]
    if key.tpm:
        out += [
            (b"x-ratelimit-limit-tokens", str(key.tpm).encode()),
            (b"x-ratelimit-remaining-tokens", str(max(0, key.tpm - usage.tokens)).encode()),
            (b"x-ratelimit-reset-tokens", duration(usage.tokens_reset).encode()),
        ]
    return out


def refusal(key: Key, limit: str, usage: Usage) -> RateLimited:
    """The 429 for ``limit`` ("rpm", "tpm" or "max_parallel")."""
    if limit == "rpm":
        wait, kind = usage.requests_reset, "requests"
        what = f"requests per minute (rpm): Limit {key.rpm}, Used {usage.requests}"
    elif limit == "tpm":
        wait, kind = usage.tokens_reset, "tokens"
        what = f"tokens per minute (tpm): Limit {key.tpm}, Used {usage.tokens}"
    else:
        wait, kind = 1.0, "requests"
        what = (
            "requests in flight (max_parallel): "
            f"Limit {key.max_parallel}, In flight {usage.in_flight}"
        )
    retry = max(1, math.ceil(wait))
    refused = RateLimited(
        f"Rate limit reached for {what}, on key '{key.name}'. Please try again in "
        f"{duration(wait) if wait > 0 else '1s'}.",
        type=kind,
        headers=((b"retry-after", str(retry).encode()), *headers(key, usage)),
    )
    refused.limit = limit
    return refused
