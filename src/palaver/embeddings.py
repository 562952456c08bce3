"""``POST /v1/embeddings``: checked as OpenAI checks it, relayed to the provider serving the
model (round-robin, failover: the router's), and cached.

The cache key covers the key (tenant) and everything the vectors depend on: the model, the
input, ``dimensions``, ``encoding_format`` and any provider-specific field. Identical requests
in flight at once in a process share one upstream call. ``Cache-Control`` works as for chat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta, Struct

from palaver.asgi import CancelOnDisconnect, Receive, Scope, Send, header, read_body, send_json
from palaver.cache import CacheBackend, CacheUnavailable, Policy, cache_key, policy_of
from palaver.errors import InvalidRequest
from palaver.limits import key_of, pass_of
from palaver.observability import note_model, note_usage
from palaver.protocol import Json, describe_validation_error, parse_json_object
from palaver.providers import ProviderRouter
from palaver.routes import check_json

log = logging.getLogger("palaver.embeddings")

MAX_INPUTS = 2048  # items of one request, as OpenAI
MAX_DIMENSIONS = 16384  # more than any embedding model has; bounds what echo computes
HIT = [(b"x-cache", b"HIT")]
MISS = [(b"x-cache", b"MISS")]
BYPASS = [(b"x-cache", b"BYPASS")]


class EmbeddingRequest(Struct):
    """The fields palaver checks; any other is forwarded as it is (provider extensions)."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: Any
    dimensions: Annotated[int, Meta(ge=1, le=MAX_DIMENSIONS)] | None = None
    encoding_format: Literal["float", "base64"] | None = None
    user: str | None = None


def _invalid(message: str, param: str = "input") -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _check_tokens(tokens: list[Any], param: str) -> None:
    if not tokens:
        raise _invalid(f"Invalid '{param}': a token list must not be empty.", param)
    for index, token in enumerate(tokens):
        if not isinstance(token, int) or isinstance(token, bool) or token < 0:
            raise _invalid(
                f"Invalid '{param}[{index}]': expected a token id (an integer from 0).",
                f"{param}[{index}]",
            )


def _check_input(value: Any) -> None:
    """A string, a list of strings, a list of token ids, or a list of token-id lists."""
    if isinstance(value, str):
        if not value:
            raise _invalid("Invalid 'input': the input must not be an empty string.")
        return
    if not isinstance(value, list) or not value:
        raise _invalid(
            "Invalid 'input': expected a string, or a non-empty list of strings or tokens."
        )
    if len(value) > MAX_INPUTS:
        raise _invalid(f"Invalid 'input': at most {MAX_INPUTS} inputs a request.")
    if isinstance(value[0], int) and not isinstance(value[0], bool):
        _check_tokens(value, "input")
        return
    for index, item in enumerate(value):
        where = f"input[{index}]"
        if isinstance(item, str):
            if not item:
                raise _invalid(f"Invalid '{where}': the input must not be an empty string.", where)
        elif isinstance(item, list):
            _check_tokens(item, where)
        else:
            raise _invalid(f"Invalid '{where}': expected a string or a list of tokens.", where)
        if type(item) is not type(value[0]):
            raise _invalid(f"Invalid '{where}': mix no strings and token lists.", where)


def parse_embedding_request(body: bytes) -> Json:
    """The validated request, as the JSON object to forward."""
    raw = parse_json_object(body)
    try:
        msgspec.convert(raw, EmbeddingRequest)
    except msgspec.ValidationError as exc:
        message, param = describe_validation_error(exc)
        if param is None:
            raise InvalidRequest(message, param=None) from None
        raise InvalidRequest(f"Invalid '{param}': {message}", param=param) from None
    _check_input(raw["input"])
    return raw


class EmbeddingHandlers:
    def __init__(self, router: ProviderRouter, cache: CacheBackend | None, max_body: int) -> None:
        self._router = router
        self._cache = cache
        self._max_body = max_body
        self._flying: dict[str, asyncio.Task[Json]] = {}

    async def create(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        check_json(scope)
        payload = parse_embedding_request(await read_body(scope, receive, self._max_body))
        note_model(payload["model"])
        key_of(scope).check_model(payload["model"])
        async with CancelOnDisconnect(receive):
            body, headers = await self._answer(payload, tenant, header(scope, b"cache-control"))
        note_usage(body.get("usage"))
        admitted = pass_of(scope)
        if admitted is not None and (b"x-cache", b"HIT") not in headers:
            await admitted.record(body.get("usage"))
        await send_json(send, 200, orjson.dumps(body), headers)

    async def _answer(
        self, payload: Json, tenant: str, cache_control: bytes | None
    ) -> tuple[Json, list[tuple[bytes, bytes]]]:
        cache = self._cache
        policy = policy_of(cache_control) if cache is not None and cache.available else None
        if cache is None or policy is None:
            return await self._router.embed(payload["model"], payload), BYPASS
        key = cache_key(tenant, {"endpoint": "embeddings", **payload})
        if policy.lookup:
            try:
                found = await cache.get(key)
            except CacheUnavailable:
                return await self._router.embed(payload["model"], payload), BYPASS
            if found is not None:
                return found, HIT
        task = self._flying.get(key) if policy.lookup else None
        if task is None:
            task = asyncio.create_task(self._fetch(cache, policy, key, payload))
            self._flying[key] = task
            task.add_done_callback(lambda done: self._landed(key, done))
        # shielded: a client that leaves does not cancel what others wait for too
        return await asyncio.shield(task), MISS

    async def _fetch(self, cache: CacheBackend, policy: Policy, key: str, payload: Json) -> Json:
        body = await self._router.embed(payload["model"], payload)
        if policy.store:
            try:
                await cache.set(key, body)
            except CacheUnavailable:
                log.info("cache unavailable: an embedding was not stored")
        return body

    def _landed(self, key: str, task: asyncio.Task[Json]) -> None:
        if self._flying.get(key) is task:
            del self._flying[key]
        if not task.cancelled():
            task.exception()  # retrieved: each waiter has had it raised
