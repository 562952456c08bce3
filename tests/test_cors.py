"""CORS (CONTRACT §3, ``server.cors_origins``): preflights as a browser sends them for the
openai SDK, the headers a page may read, and nothing at all by default."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.upstream import Upstream

PAGE = "http://localhost:5173"
# What Chromium sends before the openai SDK's POST (dangerouslyAllowBrowser: true)
SDK_HEADERS = (
    "authorization,content-type,x-conversation-id,x-stainless-arch,x-stainless-lang,"
    "x-stainless-os,x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,"
    "x-stainless-runtime-version,x-stainless-timeout"
)
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with run_upstream("up1") as up:
        yield up


def preflight(url: str, origin: str, headers: str = SDK_HEADERS) -> httpx.Response:
    return httpx.options(
        url + "/v1/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": headers,
        },
    )


def test_an_allowed_origin_may_call_and_read_palavers_headers(upstream: Upstream) -> None:
    with run_palaver(
        [provider_entry(upstream)],
        server={"cors_origins": [PAGE], "api_keys": ["sk-page"]},
        cache={"enabled": True},
    ) as url:
        answer = preflight(url, PAGE)  # no Authorization: a preflight never carries it
        assert answer.status_code == 204
        assert answer.headers["access-control-allow-origin"] == PAGE
        assert "POST" in answer.headers["access-control-allow-methods"]
        allowed = answer.headers["access-control-allow-headers"].split(", ")
        assert set(SDK_HEADERS.split(",")) <= set(allowed)
        assert answer.headers["vary"] == "Origin"
        posted = httpx.post(
            url + "/v1/chat/completions",
            json=BODY,
            headers={"Origin": PAGE, "Authorization": "Bearer sk-page", "X-Conversation-Id": "c"},
        )
        assert posted.status_code == 200
        assert posted.headers["access-control-allow-origin"] == PAGE
        exposed = {
            h.strip().lower() for h in posted.headers["access-control-expose-headers"].split(",")
        }
        assert {"x-cache", "x-conversation-id", "x-request-id", "x-palaver-trimmed"} <= exposed
        # errors carry them too, so a page can read what went wrong
        refused = httpx.post(url + "/v1/chat/completions", json=BODY, headers={"Origin": PAGE})
        assert refused.status_code == 401
        assert refused.headers["access-control-allow-origin"] == PAGE


def test_other_origins_and_other_headers_are_refused(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)], server={"cors_origins": [PAGE]}) as url:
        other = preflight(url, "http://evil.example")
        assert other.status_code == 403
        assert "access-control-allow-origin" not in other.headers
        odd = preflight(url, PAGE, "authorization,x-not-allowed")
        assert odd.status_code == 204
        assert "access-control-allow-headers" not in odd.headers  # the browser refuses
        posted = httpx.post(
            url + "/v1/chat/completions", json=BODY, headers={"Origin": "http://evil.example"}
        )
        assert "access-control-allow-origin" not in posted.headers


def test_any_origin_with_a_star(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)], server={"cors_origins": ["*"]}) as url:
        answer = preflight(url, "https://app.example.com")
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"


def test_no_cors_by_default(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream)]) as url:
        answer = preflight(url, PAGE)
        assert answer.status_code == 405
        assert "access-control-allow-origin" not in answer.headers
        posted = httpx.post(url + "/v1/chat/completions", json=BODY, headers={"Origin": PAGE})
        assert posted.status_code == 200
        assert not any(h.startswith("access-control-") for h in posted.headers)
