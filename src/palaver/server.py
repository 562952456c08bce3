"""How palaver is served: uvicorn with an HTTP protocol that bounds slow and oversized
clients, and a stop that ends what is in flight cleanly.

Slow clients (``server.header_timeout``, ``body_idle_timeout``, ``body_timeout``,
``max_header_bytes``): a request's line and headers must arrive within ``header_timeout``
of its first byte (of the connection, for a new one) and weigh at most ``max_header_bytes``;
its body may pause at most ``body_idle_timeout`` and must be whole within ``body_timeout``.
Otherwise the client gets a JSON 408 or 431 and the connection is closed; a connection that
never sends a byte is closed silently. Each connection costs at most one timer, armed only
while something is awaited; most requests arrive in one read and arm nothing.

Stopping (SIGTERM, Ctrl-C): uvicorn stops accepting and calls ``shutdown()`` on every
connection before it waits for them. That is where palaver learns of the stop: requests in
flight get ``server.shutdown_grace`` seconds, then a stream already answering ends with an
error event and ``[DONE]`` (``Drain``, used by the chat handler), and a request not yet
answered gets a JSON 503 (here). uvicorn's own deadline comes later, so it never has to
cancel a task.
"""

from __future__ import annotations

import asyncio
import logging
import math
from types import TracebackType
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from palaver.config import ServerSettings
from palaver.errors import HeadersTooLarge, PalaverError, RequestTimeout, ShuttingDown

log = logging.getLogger("palaver.server")

UVICORN_MARGIN = 5  # seconds uvicorn waits beyond the grace before it cancels anything


def uvicorn_options(settings: ServerSettings | None = None) -> dict[str, Any]:
    """The uvicorn options every palaver server uses (``palaver serve`` and the tests)."""
    grace = settings.shutdown_grace if settings is not None else 0.0
    return {
        "loop": "uvloop",
        "http": PalaverProtocol,
        "lifespan": "on",
        "timeout_graceful_shutdown": math.ceil(grace) + UVICORN_MARGIN,
    }


def _shutting_down() -> ShuttingDown:
    return ShuttingDown("palaver is shutting down and could not finish this request; please retry.")


class Drain:
    """The application's side of a stop: after the grace period, cut the open streams.

    A stream registers its task while it relays (``with drain.stream():``); at the cut the
    task is cancelled, and the ``with`` turns that cancellation into ``ShuttingDown``, which
    the handler answers with an error event and ``[DONE]``. A set add and discard per stream.
    """

    __slots__ = ("_streams", "begun", "cut", "grace")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.begun = False
        self.cut = False
        self._streams: set[asyncio.Task[Any]] = set()

    def begin(self) -> None:
        if self.begun:
            return
        self.begun = True
        log.info("stopping: requests in flight have %g s to finish", self.grace)
        asyncio.get_running_loop().call_later(self.grace, self._cut)

    def _cut(self) -> None:
        self.cut = True
        if self._streams:
            log.info("stopping: ending %d open stream(s)", len(self._streams))
        for task in self._streams:
            task.cancel()

    def stream(self) -> _StreamGuard:
        return _StreamGuard(self)


class _StreamGuard:
    __slots__ = ("_drain", "_task")

    def __init__(self, drain: Drain) -> None:
        self._drain = drain

    def __enter__(self) -> None:
        if self._drain.cut:
            raise _shutting_down()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._drain._streams.add(task)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._drain._streams.discard(self._task)
        if (
            exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
            and self._drain.cut
            and self._task.uncancel() == 0  # cancelled by the cut alone, not also otherwise
        ):
            raise _shutting_down() from None


class _Refused(Exception):
    """Raised in a parser callback to stop parsing and answer ``error``."""

    def __init__(self, error: PalaverError) -> None:
        super().__init__(error.message)
        self.error = error


def _served(app: Any) -> Any:
    """The palaver application inside uvicorn's middleware, if that is what is served."""
    for _ in range(8):
        if isinstance(getattr(app, "drain", None), Drain):
            return app
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class PalaverProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with palaver's limits on slow and large requests, and
    the grace period at a stop."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        served = _served(self.app)
        limits: ServerSettings = served.settings.server if served else ServerSettings()
        self._drain: Drain | None = served.drain if served else None
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._body_idle = limits.body_idle_timeout
        self._max_head = limits.max_header_bytes
        self._timer: asyncio.TimerHandle | None = None
        self._in_head = True  # between a request's first byte and the end of its headers
        self._head_bytes = 0  # received while the headers were incomplete
        self._arrived = 0  # those and the bytes being parsed now
        self._in_body = False  # between the end of the headers and the end of the body
        self._body_deadline = 0.0
        self._last_read = 0.0

    # -- the connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer = self.loop.call_later(self._header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, but a callback's refusal (headers too large) answers 431, not 400.
        self._unset_keepalive_if_required()
        self._arrived = self._head_bytes + len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                self._refuse(exc.__context__.error)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        if self.transport.is_closing():
            return
        if self._in_head:  # the headers are still incomplete: the parser buffers them
            self._head_bytes += len(data)
            if self._head_bytes > self._max_head:
                self._refuse(self._too_large())
            elif self._timer is None:
                self._timer = self.loop.call_later(self._header_timeout, self._head_expired)
        elif self._in_body:
            self._last_read = now = self.loop.time()
            if self._timer is None:  # the body did not come with the headers: watch it
                self._body_deadline = now + self._body_timeout
                self._timer = self.loop.call_later(self._body_idle, self._body_check)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        # Only a head that may be too large (it came in more bytes than allowed) is measured.
        if self._arrived > self._max_head:
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
            if size > self._max_head:
                raise _Refused(self._too_large())  # stops the parser: answered in data_received
        self._in_head = False
        self._in_body = True
        self._stop_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_body = False
        self._stop_timer()
        super().on_message_complete()

    # -- limits ---------------------------------------------------------------------------------

    def _too_large(self) -> HeadersTooLarge:
        return HeadersTooLarge(f"The request headers exceed {self._max_head} bytes.")

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # not a byte of a request: just close
            self.transport.close()
            return
        seconds = f"{self._header_timeout:g}"
        self._refuse(RequestTimeout(f"The request headers did not arrive within {seconds} s."))

    def _body_check(self) -> None:
        self._timer = None
        if not self._in_body or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application has not read what came: not the client
            self._last_read = now
        due = min(self._last_read + self._body_idle, self._body_deadline)
        if now < due:
            self._timer = self.loop.call_at(due, self._body_check)
            return
        self._refuse(
            RequestTimeout(
                f"The request body did not arrive in time (pauses of at most "
                f"{self._body_idle:g} s, all of it within {self._body_timeout:g} s)."
            )
        )

    def _refuse(self, error: PalaverError) -> None:
        """Answer ``error`` unless a response has begun, tell the application the client is
        gone, and close the connection."""
        self._stop_timer()
        self._in_head = self._in_body = False
        cycle = self.cycle
        pending = cycle is not None and not cycle.response_complete
        if not (pending and cycle.response_started):
            body = error.to_json()
            head = [STATUS_LINE[error.status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head.append(b"content-type: application/json\r\n")
            head.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(b"".join(head) + body)
        if pending:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    # -- stopping -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        drain = self._drain
        if drain is not None:
            drain.begin()
            cycle = self.cycle
            if cycle is not None and not cycle.response_started and not cycle.response_complete:
                self.loop.call_later(drain.grace, self._unanswered_at_stop)
        super().shutdown()

    def _unanswered_at_stop(self) -> None:
        """The grace period is over and this request has no answer yet: 503."""
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle.response_started:
            return
        log.info("stopping: %s %s got 503, unanswered", cycle.scope["method"], cycle.scope["path"])
        self._refuse(_shutting_down())
