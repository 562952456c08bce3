"""An OpenAI-compatible upstream (OpenAI, Groq, vLLM, Ollama, ...) over a pooled aiohttp session."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from palaver.config import ProviderSettings
from palaver.errors import UpstreamError, UpstreamStatus, UpstreamTimeout, UpstreamUnreachable
from palaver.protocol import Json
from palaver.streaming import parse_events

MODELS_TIMEOUT = aiohttp.ClientTimeout(total=5)


def new_session() -> aiohttp.ClientSession:
    """The one pooled HTTP client of a process, shared by every provider."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=60)
    return aiohttp.ClientSession(
        connector=connector,
        raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # a relay keeps no cookies between clients
        requote_redirect_url=False,
    )


class OpenAIProvider:
    """Relays chat completions to ``{base_url}/chat/completions``.

    Timeouts: ``connect_timeout`` for the TCP/TLS connection, ``first_byte_timeout`` until the
    answer (or a stream's first chunk) starts, ``chunk_timeout`` between two reads after that.
    The client's own credentials never travel upstream: only the provider's key does.
    """

    def __init__(self, settings: ProviderSettings, session: aiohttp.ClientSession) -> None:
        self.name = settings.name
        base = settings.base_url.rstrip("/")
        self._url = URL(base + "/chat/completions")  # parsed once, not per request
        self._models_url = URL(base + "/models")
        headers = {"Content-Type": "application/json", "User-Agent": "palaver", **settings.headers}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._headers = headers
        self._session = session
        self._first_byte = settings.first_byte_timeout
        # Non-streaming: the answer comes at once, so the read timeout is the first-byte one.
        self._whole_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.first_byte_timeout
        )
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.chunk_timeout
        )

    async def complete(self, payload: Json) -> Json:
        response = await self._post(payload, self._whole_timeout)
        try:
            raw = await response.read()
        except TimeoutError:
            raise no_answer(self.name, self._first_byte) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"Provider {self.name} broke off its answer: {exc}") from None
        finally:
            response.release()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
            raise UpstreamUnreachable(f"Provider {self.name} sent a malformed completion.")
        return body

    async def open_stream(self, payload: Json) -> _Stream:
        response: aiohttp.ClientResponse | None = None
        try:
            async with self._deadline():
                response = await self._post(payload, self._stream_timeout)
                stream = _Stream(self.name, response)
                await stream.start()
        except BaseException:
            if response is not None:
                response.close()
            raise
        return stream

    async def list_models(self) -> list[str]:
        try:
            async with self._session.get(
                self._models_url, headers=self._headers, timeout=MODELS_TIMEOUT
            ) as response:
                if response.status != 200:
                    return []
                body: Any = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return []
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            return []
        return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    async def aclose(self) -> None:
        """The session belongs to the app, which closes it."""

    def _deadline(self) -> _FirstByteDeadline:
        return _FirstByteDeadline(self.name, self._first_byte)

    async def _post(self, payload: Json, limits: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        body = orjson.dumps(payload)
        try:
            try:
                response = await self._session.post(
                    self._url, data=body, headers=self._headers, timeout=limits
                )
            except aiohttp.ServerDisconnectedError:
                # A kept-alive connection the server closed as we sent (uvicorn-based servers
                # close idle ones after 5 s): nothing was answered, so try once more afresh.
                response = await self._session.post(
                    self._url, data=body, headers=self._headers, timeout=limits
                )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"Provider {self.name} did not accept the connection.") from None
        except TimeoutError:
            raise no_answer(self.name, self._first_byte) from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"Provider {self.name} is unreachable: {exc}") from None
        if response.status >= 400:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                response.release()
            raise status_error(self.name, response.status, raw, response.headers)
        return response


def no_answer(name: str, seconds: float) -> UpstreamTimeout:
    return UpstreamTimeout(f"Provider {name} did not answer within {seconds:g} s.")


class _FirstByteDeadline:
    """``asyncio.timeout`` that turns its expiry into an ``UpstreamTimeout``."""

    __slots__ = ("_name", "_seconds", "_timeout")

    def __init__(self, name: str, seconds: float) -> None:
        self._name = name
        self._seconds = seconds
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        try:
            await self._timeout.__aexit__(*exc_info)
        except TimeoutError:
            raise no_answer(self._name, self._seconds) from None
        return None


class _Stream:
    """An upstream SSE stream; errors are mapped to ``UpstreamError``s as they surface."""

    def __init__(self, name: str, response: aiohttp.ClientResponse) -> None:
        self._name = name
        self._response = response
        self._events = parse_events(response.content.iter_any())
        self._first: list[Json] | None = None

    async def start(self) -> None:
        try:
            self._first = await self._next()
        except StopAsyncIteration:
            raise UpstreamUnreachable(
                f"Provider {self._name} ended its stream before any chunk."
            ) from None

    async def __aiter__(self) -> AsyncIterator[list[Json]]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:
            try:
                batch = await self._next()
            except StopAsyncIteration:
                return
            yield batch

    async def _next(self) -> list[Json]:
        try:
            batch = await anext(self._events)
        except TimeoutError:
            raise UpstreamTimeout(f"Provider {self._name} stalled in mid-stream.") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(
                f"Provider {self._name} broke off its stream: {exc}"
            ) from None
        for chunk in batch:
            error = chunk.get("error")
            if error is not None:
                raise _stream_error(self._name, error)
        return batch

    async def aclose(self) -> None:
        self._response.close()
        await self._events.aclose()


def _fields(error: Any) -> tuple[str | None, str | None, str | None, str | None]:
    if isinstance(error, str):
        return error, None, None, None
    if not isinstance(error, dict):
        return None, None, None, None

    def text(key: str) -> str | None:
        value = error.get(key)
        return None if value is None else str(value)

    return text("message"), text("type"), text("param"), text("code")


def _stream_error(name: str, error: Any) -> UpstreamError:
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
