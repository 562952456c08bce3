"""Named keys and rate limits through the openai SDK (CONTRACT §11): rpm, tpm and
max_parallel with OpenAI's 429 and headers, the window rolling over, allowed models (403),
and one budget shared by every palaver on one Redis, failing open when Redis is gone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import provider_entry, redis_url_or_skip, run_palaver, run_upstream
from tests.servers import free_port
from tests.test_redis import private_redis
from tests.upstream import Upstream

SECRET = "sk-web-app-secret"  # noqa: S105 - the test's own key


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


def keyed(upstream: Upstream, *, window: float = 60.0, backend: str = "memory", **key: Any) -> Any:
    entry = {"name": "web-app", "key": SECRET, **key}
    extra: dict[str, Any] = {}
    if "redis" in key:
        extra["redis"] = key.pop("redis")
        entry.pop("redis")
    return run_palaver(
        [provider_entry(upstream)],
        keys=[entry, {"name": "batch", "key": "sk-batch", "models": ["embed-*"]}],
        limits={"backend": backend, "window_seconds": window},
        **extra,
    )


def sdk(url: str, secret: str = SECRET) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=secret, max_retries=0)


def ask(client: openai.OpenAI, text: str = "hi") -> Any:
    return client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": text}]
    )


def test_rpm_refuses_with_openais_body_and_headers_and_rolls_over(upstream: Upstream) -> None:
    with keyed(upstream, rpm=3, window=1.5) as url, sdk(url) as client:
        remaining = []
        for n in range(3):
            raw = ask(client, f"q{n}")
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as raised:
            ask(client, "one too many")
        error = raised.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["type"]) == ("rate_limit_exceeded", "requests")
        assert "requests per minute (rpm): Limit 3, Used 3" in error["message"]
        assert "web-app" in error["message"]
        assert SECRET not in error["message"]
        headers = raised.value.response.headers
        assert int(headers["retry-after"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert len(upstream.chat_requests) == 3  # the refused one never reached a provider

        time.sleep(1.6)  # the window rolls over
        assert ask(client, "again").headers["x-ratelimit-remaining-requests"] == "2"
        # other routes of the key say where it stands, without counting
        listed = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {SECRET}"})
        assert listed.headers["x-ratelimit-remaining-requests"] == "2"


def test_tpm_counts_the_real_usage_streams_included(upstream: Upstream) -> None:
    # the test upstream reports 12 tokens (5 + 7) for every answer
    with keyed(upstream, tpm=30) as url, sdk(url) as client:
        first = ask(client, "a")
        assert first.headers["x-ratelimit-limit-tokens"] == "30"
        assert first.headers["x-ratelimit-remaining-tokens"] == "30"  # counted when answered
        stream = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "b"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        third = ask(client, "c")
        assert third.headers["x-ratelimit-remaining-tokens"] == "6"  # 30 - 2 x 12
        with pytest.raises(openai.RateLimitError) as raised:
            ask(client, "d")
        error = raised.value.body
        assert isinstance(error, dict)
        assert error["type"] == "tokens"
        assert "tokens per minute (tpm): Limit 30, Used 36" in error["message"]


async def test_max_parallel_with_slow_answers(upstream: Upstream) -> None:
    upstream.behave(first_byte_delay=0.5)
    with keyed(upstream, max_parallel=2) as url:
        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key=SECRET, max_retries=0
        ) as client:

            async def one(n: int) -> str:
                try:
                    await client.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"slow {n}"}]
                    )
                except openai.RateLimitError as exc:
                    return "429" if "max_parallel" in str(exc) else str(exc)
                return "200"

            results = await asyncio.gather(*(one(n) for n in range(5)))
            assert sorted(results) == ["200", "200", "429", "429", "429"]
            # the slots are free again once the answers are done
            upstream.behave(first_byte_delay=0.0)
            assert sorted(await asyncio.gather(one(8), one(9))) == ["200", "200"]


def test_models_outside_the_key_are_forbidden_and_not_listed(upstream: Upstream) -> None:
    with keyed(upstream, models=["m", "gpt-*"]) as url, sdk(url) as client:
        assert client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        ).choices
        with pytest.raises(openai.PermissionDeniedError) as raised:
            client.chat.completions.create(
                model="claude-3", messages=[{"role": "user", "content": "hi"}]
            )
        error = raised.value.body
        assert isinstance(error, dict)
        assert (error["code"], error["param"]) == ("model_not_allowed", "model")
        with pytest.raises(openai.PermissionDeniedError):
            client.responses.create(model="claude-3", input="hi")
        assert len(upstream.chat_requests) == 1
        with sdk(url, "sk-batch") as batch:
            with pytest.raises(openai.PermissionDeniedError):
                batch.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": "x"}]
                )
            assert batch.embeddings.create(model="embed-small", input="x").data
            assert [m.id for m in batch.models.list()] == []  # up-model is not an embed-*
            with pytest.raises(openai.NotFoundError):
                batch.models.retrieve("up-model")
        assert [m.id for m in client.models.list()] == []  # nor m / gpt-*


def test_keys_from_api_keys_have_no_limits(upstream: Upstream) -> None:
    with run_palaver(
        [provider_entry(upstream)],
        server={"api_keys": ["sk-plain"]},
        keys=[{"name": "web-app", "key": SECRET, "rpm": 1}],
    ) as url:
        with sdk(url, "sk-plain") as plain:
            for _ in range(3):
                raw = ask(plain)
                assert "x-ratelimit-limit-requests" not in raw.headers
        with sdk(url) as limited:
            ask(limited)
            with pytest.raises(openai.RateLimitError):
                ask(limited)
        with pytest.raises(openai.AuthenticationError), sdk(url, "sk-unknown") as stranger:
            ask(stranger)


async def test_one_budget_for_two_palavers_on_one_redis(
    upstream: Upstream, redis_prefix: str
) -> None:
    """rpm = 10, two palavers on one Redis, 40 concurrent requests spread over both:
    exactly 10 admitted, the rest 429 with the headers."""
    redis = {"url": redis_url_or_skip(), "key_prefix": redis_prefix}
    with (
        keyed(upstream, rpm=10, backend="redis", redis=redis) as one,
        keyed(upstream, rpm=10, backend="redis", redis=redis) as two,
    ):
        clients = [
            openai.AsyncOpenAI(base_url=url + "/v1", api_key=SECRET, max_retries=0)
            for url in (one, two)
        ]

        async def call(n: int) -> int:
            try:
                await clients[n % 2].chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"r{n}"}]
                )
            except openai.RateLimitError as exc:
                headers = exc.response.headers
                exhausted = headers["x-ratelimit-remaining-requests"] == "0"
                return 429 if exhausted and "retry-after" in headers else 0
            return 200

        results = await asyncio.gather(*(call(n) for n in range(40)))
        for client in clients:
            await client.close()
        assert results.count(200) == 10
        assert results.count(429) == 30
        assert len(upstream.chat_requests) == 10


def test_redis_gone_admits_and_logs_once(upstream: Upstream, caplog: Any) -> None:
    port = free_port()
    with private_redis(port) as server:
        redis = {"url": f"redis://127.0.0.1:{port}/0", "key_prefix": "lim:"}
        with keyed(upstream, rpm=2, backend="redis", redis=redis) as url, sdk(url) as client:
            ask(client)
            ask(client)
            with pytest.raises(openai.RateLimitError):
                ask(client)
            server.terminate()
            server.wait(10)
            caplog.set_level(logging.WARNING, logger="palaver.limits")
            for n in range(4):
                raw = ask(client, f"while down {n}")
                assert raw.parse().choices[0].message.content == f"[up1] while down {n}"
            limits = [r for r in caplog.records if r.name == "palaver.limits"]
            assert [r.getMessage().split(" (")[0] for r in limits] == [
                "rate limits: Redis is unreachable, requests are admitted"
            ]
            # and nothing per request from anyone else (the shared link says it once too)
            assert len(caplog.records) <= 2


@pytest.mark.parametrize(
    ("keys", "env", "message"),
    [
        ([{"name": "a", "key": "k1"}, {"name": "a", "key": "k2"}], {}, "keys[1].name: duplicate"),
        ([{"name": "a", "key": "k1", "key_env": "K"}], {}, "keys[0]: give exactly one"),
        ([{"name": "a", "key_env": "WEBAPP_KEY"}], {}, "WEBAPP_KEY is not set"),
        ([{"name": "a", "key": "   "}], {}, "keys[0].key: empty key"),
        ([{"name": "a", "key": "k1"}, {"name": "b", "key": " k1"}], {}, "configured twice"),
        ([{"name": "a b", "key": "k1"}], {}, "keys[0].name"),
        ([{"name": "a", "key": "k1", "rpm": -1}], {}, "keys[0].rpm"),
    ],
)
def test_bad_keys_are_one_clear_line(keys: Any, env: Any, message: str) -> None:
    from palaver.config import ConfigError, settings_from

    with pytest.raises(ConfigError) as raised:
        settings_from({"keys": keys}, env)
    assert message in str(raised.value)
    assert "k1" not in str(raised.value).replace("keys[1]", "")


def test_a_key_from_the_environment() -> None:
    from palaver.config import settings_from

    settings = settings_from(
        {"keys": [{"name": "a", "key_env": "WEBAPP_KEY"}]}, {"WEBAPP_KEY": " s "}
    )
    assert settings.keys[0].key == "s"


def test_the_redis_window_rolls_over(upstream: Upstream, redis_prefix: str) -> None:
    """On Redis's clock: after the window, the budget is whole again (and the tokens too)."""
    redis = {"url": redis_url_or_skip(), "key_prefix": redis_prefix}
    with (
        keyed(upstream, rpm=2, tpm=100, window=1.5, backend="redis", redis=redis) as url,
        sdk(url) as client,
    ):
        ask(client, "a")
        second = ask(client, "b")
        assert second.headers["x-ratelimit-remaining-requests"] == "0"
        assert second.headers["x-ratelimit-remaining-tokens"] == "88"  # 12 used by the first
        with pytest.raises(openai.RateLimitError):
            ask(client, "c")
        time.sleep(1.7)
        again = ask(client, "d")
        assert again.headers["x-ratelimit-remaining-requests"] == "1"
        assert again.headers["x-ratelimit-remaining-tokens"] == "100"
