"""CORS for browser clients (CONTRACT §3, ``server.cors_origins``); none by default.

With origins configured, a preflight (``OPTIONS`` with ``Origin`` and
``Access-Control-Request-Method``) from an allowed origin is answered 204 with the methods and
the headers clients send (``Authorization``, ``Content-Type``, ``X-Conversation-Id``,
``Cache-Control``, ``X-Request-Id``, ``OpenAI-*``, ``X-Stainless-*``), before any auth; every
response to an allowed origin says so and exposes palaver's headers (``X-Cache``,
``X-Conversation-Id``, ``X-Request-Id``, ``X-Palaver-Trimmed``, the rate-limit ones). A
preflight from another origin gets 403 and no CORS headers, so the browser refuses.
"""

from __future__ import annotations

from collections.abc import Sequence

from palaver.asgi import Message, Send

Headers = list[tuple[bytes, bytes]]

ALLOWED_HEADERS = frozenset(
    {
        b"authorization",
        b"content-type",
        b"x-conversation-id",
        b"cache-control",
        b"x-request-id",
        b"accept",
        b"accept-language",
        b"content-language",
    }
)
ALLOWED_PREFIXES = (b"openai-", b"x-stainless-")
EXPOSED = (
    b"X-Cache, X-Conversation-Id, X-Request-Id, X-Palaver-Trimmed, Server-Timing, Retry-After, "
    b"x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, "
    b"x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens"
)
METHODS = b"GET, POST, DELETE, HEAD, OPTIONS"
MAX_AGE = b"600"


class Cors:
    def __init__(self, origins: Sequence[str]) -> None:
        self._any = "*" in origins
        self._origins = frozenset(o.rstrip("/").encode() for o in origins if o != "*")

    def allows(self, origin: bytes | None) -> bool:
        return origin is not None and (self._any or origin in self._origins)

    def _base(self, origin: bytes) -> Headers:
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]

    def preflight(self, origin: bytes | None, requested: bytes | None) -> tuple[int, Headers]:
        """The status and headers answering a preflight."""
        if origin is None or not self.allows(origin):
            return 403, []
        asked = [h.strip().lower() for h in (requested or b"").split(b",") if h.strip()]
        refused = [h for h in asked if not _allowed_header(h)]
        headers = self._base(origin)
        headers += [
            (b"access-control-allow-methods", METHODS),
            (b"access-control-max-age", MAX_AGE),
        ]
        if asked and not refused:
            headers.append((b"access-control-allow-headers", b", ".join(asked)))
        return 204, headers

    def wrap(self, send: Send, origin: bytes | None) -> Send:
        """``send`` adding the CORS headers for an allowed ``origin``."""
        if origin is None or not self.allows(origin):
            return send
        extra = [*self._base(origin), (b"access-control-expose-headers", EXPOSED)]

        async def send_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        return send_cors


def _allowed_header(name: bytes) -> bool:
    return name in ALLOWED_HEADERS or name.startswith(ALLOWED_PREFIXES)
