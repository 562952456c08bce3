"""What went wrong with a provider, in plain words.

aiohttp's exceptions name the library, quote addresses and errno texts; a client is told only
which provider failed and how ("Provider groq is unreachable: connection refused."), with a
code that fits: a provider that could not be reached (``upstream_unreachable``), one that
answered and broke off (``upstream_error``), one that answered nonsense
(``upstream_malformed``). The technical detail goes to the server log, once, as a warning.

Running out of file descriptors is palaver's own fault, not the provider's: it is a 503 that
neither cools the provider down nor fails over to the next one (which would fail alike).
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from palaver.errors import (
    OutOfResources,
    PalaverError,
    UpstreamError,
    UpstreamMalformed,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
)

log = logging.getLogger("palaver.providers")

LOCAL_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE})
_CONNECT_FAILURES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}
FD_WARNING_EVERY = 10.0  # seconds: an fd shortage hits every request; say so now and then
_last_fd_warning = -FD_WARNING_EVERY


def logged(name: str, error: PalaverError, exc: BaseException) -> PalaverError:
    """``error`` for the client; the exception's detail for the log."""
    log.warning("provider %s: %s (%s)", name, error.message, detail(exc))
    return error


def detail(exc: BaseException) -> str:
    """The technical detail of ``exc`` for the log: its type, text and errno name."""
    text = f"{type(exc).__name__}: {exc}"
    code = _errno(exc)
    if code is not None:
        text += f" [{errno.errorcode.get(code, code)}]"
    return text


def _errno(exc: BaseException) -> int | None:
    for candidate in (getattr(exc, "os_error", None), exc, exc.__cause__):
        code = getattr(candidate, "errno", None)
        if isinstance(code, int):
            return code
    return None


def out_of_resources(name: str, exc: BaseException) -> PalaverError | None:
    """The local-exhaustion error if ``exc`` says palaver is out of file descriptors."""
    if _errno(exc) not in LOCAL_EXHAUSTION:
        return None
    global _last_fd_warning
    now = time.monotonic()
    if now - _last_fd_warning >= FD_WARNING_EVERY:
        _last_fd_warning = now
        log.warning(
            "out of file descriptors (%s) while connecting to provider %s: raise the limit "
            "(ulimit -n) or lower the load; requests get 503 meanwhile",
            detail(exc),
            name,
        )
    return OutOfResources(
        "palaver is out of file descriptors (too many open connections) and could not reach "
        f"provider {name}; please retry shortly.",
        headers=((b"retry-after", b"1"),),
    )


def connection_failed(name: str, exc: aiohttp.ClientError | OSError) -> PalaverError:
    """Sending the request failed: map the exception to what a client may read."""
    local = out_of_resources(name, exc)
    if local is not None:
        return local
    how: str | None
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        how = "its host name could not be resolved"
    elif isinstance(exc, aiohttp.ClientConnectorCertificateError):
        how = "its TLS certificate was not accepted"
    elif isinstance(exc, aiohttp.ClientSSLError):
        how = "the TLS handshake failed"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        how = "it closed the connection without answering"
    elif isinstance(exc, aiohttp.ClientResponseError):
        return logged(name, malformed(name), exc)
    else:
        code = _errno(exc)
        how = _CONNECT_FAILURES.get(code) if code is not None else None
        if how is None:
            how = "could not connect" if isinstance(exc, aiohttp.ClientConnectorError) else None
    message = f"Provider {name} is unreachable" + (f": {how}." if how else ".")
    return logged(name, UpstreamUnreachable(message), exc)


def malformed(name: str) -> UpstreamError:
    return UpstreamMalformed(f"Provider {name} sent a malformed answer.")


def no_answer(name: str, seconds: float) -> UpstreamTimeout:
    return UpstreamTimeout(f"Provider {name} did not answer within {seconds:g} s.")


def _fields(error: Any) -> tuple[str | None, str | None, str | None, str | None]:
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        return None, None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return None if value is None else str(value)

    return text("message"), text("type"), text("param"), text("code")


def stream_error(name: str, error: Any) -> UpstreamError:
    """An error event inside an upstream stream."""
    message, _type, param, code = _fields(error)
    return UpstreamStatus(
        502,
        f"Provider {name} failed in mid-stream: {message or 'unknown error'}",
        type="upstream_error",
        param=param,
        code=code,
        retryable=False,
    )


def status_error(name: str, status: int, raw: bytes, headers: Mapping[str, str]) -> UpstreamStatus:
    """An upstream error answer, kept as the provider said it (a 5xx becomes our 502)."""
    try:
        body: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    message = type_ = param = code = None
    if isinstance(body, dict):
        message, type_, param, code = _fields(body.get("error", body.get("detail")))
        if message is None and isinstance(body.get("message"), str):
            message = body["message"]
    if message is None:
        message = raw[:200].decode("utf-8", "replace").strip() or "no message"
    retry_after = headers.get("Retry-After")
    kept = ((b"retry-after", retry_after.encode("latin-1")),) if retry_after else ()
    retryable = status in (408, 429) or status >= 500
    if status >= 500:
        return UpstreamStatus(
            502,
            f"Provider {name} failed with status {status}: {message}",
            type="upstream_error",
            param=None,
            code="upstream_error",
            retryable=True,
        )
    return UpstreamStatus(
        status, message, type=type_, param=param, code=code, headers=kept, retryable=retryable
    )
