"""Model -> providers: round-robin between the providers of a model, failover before the first byte.

A model named in a provider's ``models`` goes to those providers; any other name goes to the
providers that serve ``"*"``. A provider that fails in a way another one may not (connection
error, timeout, 429, 5xx; a 404 from a wildcard provider, which may simply not have the
model) is skipped, cooled down for a moment, and the next one tried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from palaver.errors import NotFound, UpstreamError, UpstreamStatus
from palaver.observability import metrics
from palaver.observability.context import note_provider
from palaver.protocol import Json
from palaver.providers.base import ChunkStream, Provider

T = TypeVar("T")
log = logging.getLogger("palaver.providers")

COOLDOWN_SECONDS = 2.0
MAX_COOLDOWN_SECONDS = 60.0
MODELS_CACHE_SECONDS = 60.0


class ProviderRouter:
    def __init__(self, routes: Sequence[tuple[Provider, Sequence[str]]]) -> None:
        self._providers = [provider for provider, _ in routes]
        self._exact: dict[str, list[Provider]] = {}
        self._wildcard: list[Provider] = []
        for provider, models in routes:
            for model in models:
                if model == "*":
                    self._wildcard.append(provider)
                else:
                    self._exact.setdefault(model, []).append(provider)
        self._turn: dict[str, int] = {}
        self._cool_until: dict[str, float] = {}
        self._models: list[tuple[str, str]] | None = None
        self._listed: dict[str, str] = {}
        self._models_at = 0.0

    @property
    def providers(self) -> list[Provider]:
        return self._providers

    async def listed_owner(self, model: str) -> str | None:
        """The provider ``/v1/models`` lists ``model`` under (None: it is not listed), so that
        retrieving a model agrees with the list. A wildcard provider that answers any name
        (echo) owns every name, listed or not."""
        exact = self._exact.get(model)
        if exact:
            return exact[0].name
        await self.list_models()
        owner = self._listed.get(model)
        if owner is not None:
            return owner
        for provider in self._wildcard:
            if provider.serves_any_model:
                return provider.name
        return None

    def candidates(self, model: str) -> tuple[list[Provider], bool]:
        """The providers to try for ``model``, in this request's order, and if by wildcard."""
        exact = self._exact.get(model)
        pool, wildcard = (exact, False) if exact else (self._wildcard, True)
        if len(pool) <= 1:
            return pool, wildcard
        key = "*" if wildcard else model
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        start = turn % len(pool)
        order = pool[start:] + pool[:start]
        if self._cool_until:
            now = time.monotonic()
            order.sort(key=lambda p: self._cool_until.get(p.name, 0.0) > now)
        return order, wildcard

    async def complete(self, model: str, payload: Json) -> Json:
        return await self._first_success(model, lambda provider: provider.complete(payload))

    async def open_stream(self, model: str, payload: Json) -> ChunkStream:
        return await self._first_success(model, lambda provider: provider.open_stream(payload))

    async def embed(self, model: str, payload: Json) -> Json:
        return await self._first_success(model, lambda provider: provider.embed(payload))

    async def _first_success(self, model: str, call: Callable[[Provider], Awaitable[T]]) -> T:
        providers, wildcard = self.candidates(model)
        if not providers:
            raise NotFound(
                f"The model '{model}' does not exist or no provider serves it.",
                param="model",
                code="model_not_found",
            )
        failure: UpstreamError | None = None
        for provider in providers:
            started = time.perf_counter()
            try:
                result = await call(provider)
            except UpstreamError as exc:
                note_provider(provider.name, time.perf_counter() - started)
                metrics.upstream_error(provider.name, exc)
                not_here = wildcard and isinstance(exc, UpstreamStatus) and exc.status == 404
                if not (exc.retryable or not_here):
                    raise
                if not not_here:
                    self._cool(provider.name, exc)
                log.warning("provider %s failed: %s", provider.name, exc.message)
                failure = exc
                continue
            note_provider(provider.name, time.perf_counter() - started)
            if self._cool_until:
                self._cool_until.pop(provider.name, None)
            return result
        assert failure is not None
        raise failure

    def _cool(self, name: str, error: UpstreamError) -> None:
        seconds = COOLDOWN_SECONDS
        for header, value in error.headers:
            if header == b"retry-after":
                with contextlib.suppress(ValueError):
                    seconds = min(float(value), MAX_COOLDOWN_SECONDS)
        self._cool_until[name] = time.monotonic() + seconds

    async def list_models(self) -> list[tuple[str, str]]:
        """(model, provider) pairs: the names in the config, and what wildcard providers report."""
        if self._models is not None and time.monotonic() - self._models_at < MODELS_CACHE_SECONDS:
            return self._models
        seen: dict[str, str] = {}
        for model, providers in self._exact.items():
            seen.setdefault(model, providers[0].name)
        reported = await asyncio.gather(*(p.list_models() for p in self._wildcard))
        for provider, names in zip(self._wildcard, reported, strict=True):
            for model in names:
                seen.setdefault(model, provider.name)
        self._models = sorted(seen.items())
        self._listed = seen
        self._models_at = time.monotonic()
        return self._models
