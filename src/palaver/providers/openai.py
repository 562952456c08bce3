"""An OpenAI-compatible upstream (OpenAI, Groq, vLLM, Ollama, ...) over a pooled aiohttp session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp
import orjson
from yarl import URL

from palaver.config import ProviderSettings
from palaver.errors import (
    UpstreamError,
    UpstreamInterrupted,
    UpstreamMalformed,
    UpstreamTimeout,
)
from palaver.protocol import Json
from palaver.providers.failures import (
    connection_failed,
    detail,
    logged,
    malformed,
    no_answer,
    status_error,
    stream_error,
)
from palaver.streaming import EventParser

log = logging.getLogger("palaver.providers")

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
    """Relays chat completions to ``{base_url}/chat/completions`` (embeddings to ``/embeddings``).

    Timeouts: ``connect_timeout`` for the TCP/TLS connection, ``first_byte_timeout`` until the
    answer (or a stream's first chunk) starts, ``chunk_timeout`` between two reads after that.
    A stream's socket reads start under ``first_byte_timeout`` (the response headers may come
    as late as the first chunk) and switch to ``chunk_timeout`` once the first chunk is in.
    The client's own credentials never travel upstream: only the provider's key does.
    """

    serves_any_model = False

    def __init__(self, settings: ProviderSettings, session: aiohttp.ClientSession) -> None:
        self.name = settings.name
        base = settings.base_url.rstrip("/")
        self._url = URL(base + "/chat/completions")  # parsed once, not per request
        self._models_url = URL(base + "/models")
        self._embeddings_url = URL(base + "/embeddings")
        headers = {"Content-Type": "application/json", "User-Agent": "palaver", **settings.headers}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._headers = headers
        self._session = session
        self._first_byte = settings.first_byte_timeout
        self._chunk = settings.chunk_timeout
        # Until the answer (or a stream's first chunk) is in, reads wait first_byte_timeout;
        # a stream switches to chunk_timeout after its first chunk (``_Stream.started``).
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.first_byte_timeout
        )
        self._models_failing = False

    async def complete(self, payload: Json) -> Json:
        return await self._answer(await self._post(payload), "choices")

    async def embed(self, payload: Json) -> Json:
        return await self._answer(await self._post(payload, self._embeddings_url), "data")

    async def _answer(self, response: aiohttp.ClientResponse, listing: str) -> Json:
        """The JSON body of an answer, which must hold the list ``listing``."""
        try:
            raw = await response.read()
        except TimeoutError:
            raise no_answer(self.name, self._first_byte) from None
        except aiohttp.ClientError as exc:
            broke_off = UpstreamInterrupted(f"Provider {self.name} broke off its answer mid-body.")
            raise logged(self.name, broke_off, exc) from None
        finally:
            response.release()
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get(listing), list):
            log.warning("provider %s: malformed answer: %r", self.name, raw[:200])
            raise malformed(self.name)
        return body

    async def open_stream(self, payload: Json) -> _Stream:
        response: aiohttp.ClientResponse | None = None
        try:
            async with self._deadline():
                response = await self._post(payload)
                stream = _Stream(self.name, response)
                await stream.start()
        except BaseException:
            if response is not None:
                response.close()
            raise
        stream.started(self._chunk)
        return stream

    async def list_models(self) -> list[str]:
        """The upstream's model names; a failure is logged once (until it answers again)."""
        problem: str
        try:
            async with self._session.get(
                self._models_url, headers=self._headers, timeout=MODELS_TIMEOUT
            ) as response:
                raw = await response.read()
            problem = f"status {response.status}"
            if response.status == 200:
                body: Any = orjson.loads(raw)
                data = body.get("data") if isinstance(body, dict) else None
                if isinstance(data, list):
                    self._models_failing = False
                    return [
                        m["id"]
                        for m in data
                        if isinstance(m, dict) and isinstance(m.get("id"), str)
                    ]
                problem = "an answer without a 'data' list"
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as exc:
            problem = detail(exc)
        if not self._models_failing:
            self._models_failing = True
            log.warning(
                "provider %s: could not list its models at %s (%s); /v1/models leaves them out",
                self.name,
                self._models_url,
                problem,
            )
        return []

    async def aclose(self) -> None:
        """The session belongs to the app, which closes it."""

    def _deadline(self) -> _FirstByteDeadline:
        return _FirstByteDeadline(self.name, self._first_byte)

    async def _post(self, payload: Json, url: URL | None = None) -> aiohttp.ClientResponse:
        body = orjson.dumps(payload)
        limits = self._timeout
        url = url or self._url
        try:
            try:
                response = await self._session.post(
                    url, data=body, headers=self._headers, timeout=limits
                )
            except aiohttp.ServerDisconnectedError:
                # A kept-alive connection the server closed as we sent (uvicorn-based servers
                # close idle ones after 5 s): nothing was answered, so try once more afresh.
                response = await self._session.post(
                    url, data=body, headers=self._headers, timeout=limits
                )
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamTimeout(f"Provider {self.name} did not accept the connection.") from None
        except TimeoutError:
            raise no_answer(self.name, self._first_byte) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise connection_failed(self.name, exc) from None
        if response.status >= 400:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                raw = b""
            finally:
                response.release()
            raise status_error(self.name, response.status, raw, response.headers)
        return response


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
        self._parser = EventParser()
        self._ended = False  # [DONE] or the end of the body came
        self._first: list[Json] | None = None
        self._broke_off = f"Provider {name} broke off its answer."

    async def start(self) -> None:
        try:
            self._first = await self._next()
        except StopAsyncIteration:
            if "event-stream" not in self._response.headers.get("Content-Type", ""):
                log.warning(
                    "provider %s: a stream request was answered without a stream", self._name
                )
                raise malformed(self._name) from None
            raise UpstreamMalformed(f"Provider {self._name} sent an empty stream.") from None

    def started(self, chunk_timeout: float) -> None:
        """The first chunk is in: from now on a read may wait ``chunk_timeout``."""
        self._broke_off = f"Provider {self._name} broke off its stream."
        connection = self._response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = chunk_timeout
            connection.protocol.start_timeout()

    async def __aiter__(self) -> AsyncGenerator[list[Json], None]:
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
        """The chunks of the next read that completed any (raises StopAsyncIteration at the
        end): the body read and parsed here, with no generator between."""
        content = self._response.content
        while not self._ended:
            try:
                piece = await content.readany()
            except TimeoutError:
                raise UpstreamTimeout(f"Provider {self._name} stalled in mid-stream.") from None
            except (aiohttp.ClientError, OSError) as exc:
                raise logged(self._name, UpstreamInterrupted(self._broke_off), exc) from None
            try:
                if piece:
                    batch, self._ended = self._parser.feed(piece)
                else:
                    batch, self._ended = self._parser.end(), True
            except UpstreamError as exc:  # the SSE parser's: an event that is not JSON
                raise logged(self._name, malformed(self._name), exc) from None
            if not batch:
                continue
            for chunk in batch:
                error = chunk.get("error")
                if error is not None:
                    raise stream_error(self._name, error)
            return batch
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._response.close()
