from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import openai
import pytest

from palaver.app import create_app
from palaver.config import settings_from
from tests.servers import serve
from tests.upstream import Upstream


def provider_entry(
    upstream: Upstream, models: Sequence[str] = ("*",), **extra: Any
) -> dict[str, Any]:
    return {
        "name": upstream.name,
        "base_url": upstream.url + "/v1",
        "api_key": f"sk-upstream-{upstream.name}",
        "models": list(models),
        "connect_timeout": 1.0,
        "first_byte_timeout": 3.0,
        "chunk_timeout": 3.0,
        **extra,
    }


@contextmanager
def run_palaver(providers: Sequence[dict[str, Any]] = (), **sections: Any) -> Iterator[str]:
    """palaver over loopback with these provider entries and settings sections; yields its URL."""
    tree: dict[str, Any] = {
        "providers": list(providers),
        "conversations": {"backend": "memory"},  # tests that want sqlite give a tmp path
        "cache": {"enabled": False},  # relay tests count upstream calls; cache tests enable it
        **sections,
    }
    with serve(create_app(settings_from(tree))) as url:
        yield url


@contextmanager
def run_upstream(name: str = "up", **kwargs: Any) -> Iterator[Upstream]:
    upstream = Upstream(name=name, **kwargs)
    with serve(upstream) as url:
        upstream.url = url
        yield upstream


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


@pytest.fixture
def palaver_url(upstream: Upstream) -> Iterator[str]:
    with run_palaver([provider_entry(upstream)]) as url:
        yield url


@pytest.fixture
def client(palaver_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=palaver_url + "/v1", api_key="sk-client", max_retries=0) as c:
        yield c


def redis_url_or_skip() -> str:
    """REDIS_URL; tests needing Redis skip without it locally, and fail without it in CI."""
    url = os.environ.get("REDIS_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("REDIS_URL must be set in CI: the Redis tests must run there")
        pytest.skip("REDIS_URL is not set")
    return url


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    url = redis_url_or_skip()
    prefix = f"palaver-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
