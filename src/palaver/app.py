"""``create_app(settings)``: the ASGI application, its routes, auth and error layer."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

import aiohttp
import orjson

from palaver.asgi import (
    ClientDisconnected,
    Receive,
    Scope,
    Send,
    header,
    send_json,
    with_headers,
    without_body,
)
from palaver.cache import CacheBackend, MemoryCache
from palaver.cache.redis import RedisCache
from palaver.config import Settings, load_settings
from palaver.conversations import Conversations
from palaver.conversations.routes import ConversationHandlers
from palaver.cors import Cors
from palaver.embeddings import EmbeddingHandlers
from palaver.errors import MethodNotAllowed, NotFound, PalaverError, Unauthorized
from palaver.limits import OPEN, Gate, Key, KeyRing, MemoryLimiter, RedisLimiter, tenant_of
from palaver.limits.access import SCOPE_KEY
from palaver.observability import RequestContext, access_line, current, metrics, request_id
from palaver.observability.http import observed
from palaver.playground import Playground
from palaver.providers import build_router, new_session
from palaver.redis_link import RedisLink
from palaver.responses import Responses, ResponseStore
from palaver.responses.backends import RedisResponses, SqliteResponses
from palaver.responses.routes import ResponseHandlers
from palaver.responses.store import MemoryResponses
from palaver.routes import Handlers
from palaver.server import Drain
from palaver.service import ChatService
from palaver.stores import ConversationStore, open_store
from palaver.tokens import Budgets, ModelTable

log = logging.getLogger("palaver")

Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]

PUBLIC_PATHS = frozenset({"/health", "/metrics"})  # /metrics checks the admin key itself
_TEMPLATE_WORDS = frozenset({"v1", "conversations", "items", "responses", "input_items", "models"})

# The cyclic collector runs a young collection whenever tracked objects allocated outnumber
# those freed by GC_THRESHOLDS[0] (Python's default: 700). Each one walks every young object
# still alive, and the requests in flight keep ~2,000 (their coroutines, parsed bodies,
# aiohttp's and uvicorn's state: a collection cost ~130 us at 32 connections), so the default
# ran one every ~18 requests and, from the survivors it promoted, full collections of the
# whole heap (with the conversations kept decoded, ~9 ms each): 7-9 us of collector time a
# stateless request and 17-28 us a SQLite turn (gc.callbacks, 2026-12-08). Serving is steady:
# what a request allocates it frees, by refcounting, so at 3,000 a young collection comes
# only when memory really grows (2 in 29,000 requests; ~0 us a request and ~0.7 a turn).
# 10,000 measured the same and raised the bench's RSS peak from ~130 to 157 MB in one run.
GC_THRESHOLDS = (3_000, 10, 10)


def route_template(path: str) -> str:
    """A path as a metrics label: ids become ``{id}`` (``/v1/conversations/{id}/items``)."""
    parts = [p if p in _TEMPLATE_WORDS else "{id}" for p in path.strip("/").split("/")]
    return "/" + "/".join(parts[:5])


# Routes with parameters, by their leading path segments.
CONVERSATION_PREFIXES = (("v1", "conversations"), ("conversations",))
RESPONSE_PREFIXES = (("v1", "responses"), ("responses",))
MODEL_PREFIXES = (("v1", "models"), ("models",))


# Routes whose requests call a model: they count against a key's limits.
LIMITED_PATHS = frozenset(
    {"/v1/chat/completions", "/chat/completions", "/v1/responses", "/responses"}
    | {"/v1/embeddings", "/embeddings"}
)


def key_ring(settings: Settings) -> KeyRing:
    """``server.api_keys`` (no limits) and ``[[keys]]``."""
    entries = [
        (secret, Key(name=f"api-key-{index + 1}", tenant=tenant_of(secret)))
        for index, secret in enumerate(settings.server.api_keys)
    ]
    for entry in settings.keys:
        secret = entry.key or ""
        entries.append(
            (
                secret,
                Key(
                    name=entry.name,
                    tenant=tenant_of(secret),
                    models=tuple(entry.models),
                    rpm=entry.rpm,
                    tpm=entry.tpm,
                    max_parallel=entry.max_parallel,
                ),
            )
        )
    return KeyRing(entries)


@dataclass(slots=True)
class _Runtime:
    session: aiohttp.ClientSession
    store: ConversationStore
    responses: ResponseStore
    link: RedisLink | None
    service: ChatService
    routes: dict[str, dict[str, Handler]]
    conversation_routes: ConversationHandlers
    response_routes: ResponseHandlers
    model_route: dict[str, Handler]
    sweeper: asyncio.Task[None] | None


class Palaver:
    """The palaver ASGI application. Everything it uses is built at startup, closed at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._keys = key_ring(settings)
        self._access_log = settings.server.access_log
        origins = settings.server.cors_origins
        self._cors = Cors(origins) if origins else None
        self._gate: Gate | None = None
        self._public = PUBLIC_PATHS
        self._runtime: _Runtime | None = None
        # Set off by the server when it stops (palaver.server): open streams end cleanly.
        self.drain = Drain(settings.server.shutdown_grace)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def startup(self) -> None:
        settings = self.settings
        uses_redis = "redis" in (
            settings.cache.backend,
            settings.conversations.backend,
            settings.limits.backend,
        )
        redis = settings.redis
        link = (
            RedisLink(
                redis.url,
                redis.key_prefix,
                max_connections=redis.max_connections,
                pool_timeout=redis.pool_timeout,
            )
            if uses_redis
            else None
        )
        store = await open_store(settings.conversations, link)
        response_store = await _response_store(settings, link)
        session = new_session()
        router = build_router(settings.providers, session)
        conversations = Conversations(store, settings.conversations)
        max_body = settings.server.max_body_bytes
        cache = _cache_backend(settings, link)
        service = ChatService(router, conversations, cache, budgets(settings))
        handlers = Handlers(service, router, max_body, self.drain)
        conversation_routes = ConversationHandlers(conversations, max_body)
        responses = Responses(response_store, conversations, settings.conversations.max_messages)
        response_routes = ResponseHandlers(service, responses, max_body, self.drain)
        embed: dict[str, Handler] = {"POST": EmbeddingHandlers(router, cache, max_body).create}
        chat: dict[str, Handler] = {"POST": handlers.chat}
        create: dict[str, Handler] = {"POST": response_routes.create}
        models: dict[str, Handler] = {"GET": handlers.models}
        routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": chat,
            "/chat/completions": chat,
            "/v1/responses": create,
            "/responses": create,
            "/v1/embeddings": embed,
            "/embeddings": embed,
            "/v1/models": models,
            "/models": models,
            "/health": {"GET": handlers.health},
            "/metrics": {"GET": self._metrics},
        }
        page = Playground().routes()  # no auth to load the page: it asks for the key
        routes.update(page)
        self._public = PUBLIC_PATHS | frozenset(page)
        idle_ttl = settings.conversations.idle_ttl_seconds
        sweeper = None
        if idle_ttl:
            sweeper = asyncio.create_task(self._sweep(store, idle_ttl))
        self._runtime = _Runtime(
            session,
            store,
            response_store,
            link,
            service,
            routes,
            conversation_routes,
            response_routes,
            {"GET": handlers.model},
            sweeper,
        )
        where = {
            "sqlite": f" at {settings.conversations.path}",
            "redis": f" at {settings.redis.url}",
        }
        log.info(
            "conversations: %s backend%s; cache: %s",
            settings.conversations.backend,
            where.get(settings.conversations.backend, ""),
            f"{settings.cache.backend} backend" if settings.cache.enabled else "disabled",
        )
        if self.settings.providers:
            for provider in self.settings.providers:
                log.info(
                    "provider %s (%s) at %s serves %s",
                    provider.name,
                    provider.source,
                    provider.base_url or "built-in",
                    ", ".join(provider.models),
                )
        else:
            log.info("no provider configured: the built-in echo model answers every model name")
        metrics.enabled = settings.server.metrics
        window = settings.limits.window_seconds
        if settings.limits.backend == "redis" and link is not None:
            self._gate = Gate(RedisLimiter(link, window))
        else:
            self._gate = Gate(MemoryLimiter(window))
        if self._keys:
            log.info("API keys required: %d configured", len(self._keys))
            for key in self._keys.all():
                log.info(
                    "key %s: models %s; rpm %s, tpm %s, max_parallel %s (%s limits)",
                    key.name,
                    ", ".join(key.models),
                    key.rpm or "-",
                    key.tpm or "-",
                    key.max_parallel or "-",
                    settings.limits.backend,
                )

    async def _metrics(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        """``GET /metrics``: Prometheus text, every worker's (admin key required if set)."""
        server = self.settings.server
        if not server.metrics:
            raise NotFound("Metrics are turned off (server.metrics = false).", code="unknown_url")
        if server.admin_key:
            secret = _bearer(scope)
            if secret is None or not hmac.compare_digest(secret, server.admin_key.encode()):
                raise Unauthorized("/metrics needs 'Authorization: Bearer <server.admin_key>'.")
        elif self._keys:
            raise Unauthorized("/metrics is closed: set server.admin_key to read it.")
        body = metrics.scrape()
        headers = [(b"content-type", metrics.CONTENT_TYPE)]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def shutdown(self) -> None:
        metrics.process_exited()
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            if runtime.sweeper is not None:
                runtime.sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runtime.sweeper
            await runtime.service.close()
            await runtime.session.close()
            await runtime.store.close()
            await runtime.responses.close()
            if runtime.link is not None:
                await runtime.link.close()

    async def _sweep(self, store: ConversationStore, idle_ttl: float) -> None:
        """Remove idle conversations now and then (loads also skip idle ones on their own)."""
        while True:
            await asyncio.sleep(min(idle_ttl, 60.0))
            try:
                await store.enforce_limits()
            except Exception:
                log.exception("sweeping idle conversations failed")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                gc.freeze()  # what startup built lives on: keep it out of every collection
                gc.set_threshold(*GC_THRESHOLDS)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _authenticate(self, scope: Scope) -> Key:
        if not self._keys:
            return OPEN
        if header(scope, b"authorization") is None:
            raise Unauthorized(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'."
            )
        secret = _bearer(scope)
        key = None if secret is None else self._keys.find(secret)
        if key is None:
            raise Unauthorized("Incorrect API key provided.")
        return key

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = RequestContext(request_id(header(scope, b"x-request-id")))
        context.route = f"{scope['method']} {scope['path']}"
        token = current.set(context)
        try:
            await self._serve(scope, receive, observed(send, context), context)
        finally:
            if self._access_log:
                access_line(context)
            if metrics.enabled:
                metrics.request_done(context, context.template)
                if context.streaming:
                    metrics.stream_ended()
            current.reset(token)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, context: RequestContext
    ) -> None:
        method: str = scope["method"]
        if self._cors is not None:
            origin = header(scope, b"origin")
            requested = header(scope, b"access-control-request-method")
            if method == "OPTIONS" and origin is not None and requested is not None:
                status, headers = self._cors.preflight(
                    origin, header(scope, b"access-control-request-headers")
                )
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": b""})
                return
            send = self._cors.wrap(send, origin)
        if method == "HEAD":  # answered as a GET would be (404s included), without the body
            send = without_body(send)
            scope = {**scope, "method": "GET"}
        try:
            runtime = self._runtime
            if runtime is None:
                raise PalaverError("palaver is not started (the server must run its lifespan).")
            raw_path: bytes | None = scope.get("raw_path")
            path = raw_path.decode("latin-1") if raw_path else scope["path"]
            methods: Mapping[str, Handler] | None = runtime.routes.get(path)
            if methods is not None:
                context.template = path
            else:
                path, methods = _resolve(runtime, path)
                if methods is None:
                    raise NotFound(
                        f"Unknown request URL: {scope['method']} {path}.", code="unknown_url"
                    )
                context.template = route_template(path)
            handler = methods.get(scope["method"])
            if handler is None:
                raise MethodNotAllowed(
                    f"Method {method} is not allowed on {path}.",
                    headers=((b"allow", _allow(methods)),),
                )
            key = OPEN if path in self._public else self._authenticate(scope)
            scope[SCOPE_KEY] = key
            context.key = key.name if key is not OPEN else None
            admitted = None
            if key.limited and self._gate is not None:
                counted = path in LIMITED_PATHS and scope["method"] == "POST"
                admitted = await self._gate.enter(scope, key, counted)
            if admitted is not None:
                send = with_headers(send, admitted.headers)  # errors below carry them too
            try:
                await handler(scope, receive, send, key.tenant)
            finally:
                if admitted is not None:
                    await admitted.leave()
        except ClientDisconnected:
            log.info("client disconnected: its request was cancelled")
        except PalaverError as exc:
            await self._try_send(send, exc, context)
        except Exception:
            log.exception("request failed")
            await self._try_send(
                send, PalaverError("The server had an error processing the request."), context
            )

    @staticmethod
    async def _try_send(send: Send, error: PalaverError, context: RequestContext) -> None:
        body = error.to_dict()
        if error.status >= 500:  # what to quote when reporting it
            body["error"]["message"] = f"{error.message} (request id {context.id})"
        try:
            await send_json(send, error.status, orjson.dumps(body), list(error.headers))
        except Exception:  # the response had already started, or the client is gone
            log.debug("could not send the error response", exc_info=True)


def _bearer(scope: Scope) -> bytes | None:
    """The secret of an ``Authorization: Bearer <secret>`` header (trimmed), else None."""
    scheme, _, secret = (header(scope, b"authorization") or b"").partition(b" ")
    return secret.strip() if scheme.lower() == b"bearer" else None


def _resolve(runtime: _Runtime, path: str) -> tuple[str, Mapping[str, Handler] | None]:
    """The handlers by method for a path that is not literally a fixed route: ``path`` is the
    raw path, so each segment is %-decoded on its own (an encoded '/' stays in its segment)."""
    segments = [unquote(s) if "%" in s else s for s in path.strip("/").split("/")]
    if not any("/" in s for s in segments):
        fixed = "/" + "/".join(segments)
        methods = runtime.routes.get(fixed)
        if methods is not None:
            return fixed, methods
    for prefix in CONVERSATION_PREFIXES:
        if tuple(segments[: len(prefix)]) == prefix:
            return path, runtime.conversation_routes.routes(segments[len(prefix) :])
    for prefix in RESPONSE_PREFIXES:
        if tuple(segments[: len(prefix)]) == prefix:
            return path, runtime.response_routes.routes(segments[len(prefix) :])
    for prefix in MODEL_PREFIXES:
        if tuple(segments[: len(prefix)]) == prefix and len(segments) > len(prefix):
            return path, runtime.model_route
    return path, None


def _allow(methods: Mapping[str, Handler]) -> bytes:
    allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
    return ", ".join(sorted(allowed)).encode()


def _cache_backend(settings: Settings, link: RedisLink | None) -> CacheBackend | None:
    cache = settings.cache
    if not cache.enabled:
        return None
    if cache.backend == "redis":
        assert link is not None
        return RedisCache(link, cache.ttl_seconds)
    return MemoryCache(cache.ttl_seconds, cache.max_entries, cache.max_bytes)


async def _response_store(settings: Settings, link: RedisLink | None) -> ResponseStore:
    """Stored responses live where the conversations do."""
    conversations, ttl = settings.conversations, settings.responses.ttl_seconds
    if conversations.backend == "redis":
        assert link is not None
        return RedisResponses(link, ttl)
    if conversations.backend == "sqlite":
        sqlite = SqliteResponses(conversations.path, ttl)
        await sqlite.open()
        return sqlite
    return MemoryResponses(ttl, settings.responses.max_entries)


def create_app(settings: Settings | None = None) -> Palaver:
    """The application for ``settings`` (default: loaded from the file and the environment)."""
    return Palaver(settings if settings is not None else load_settings())


def budgets(settings: Settings) -> Budgets:
    """Token budgets from ``[models]`` and the built-in table (CONTRACT §5)."""
    configured = {
        name: (model.context_window, model.tokenizer) for name, model in settings.models.items()
    }
    return Budgets(ModelTable(configured), settings.conversations.reply_reserve)
