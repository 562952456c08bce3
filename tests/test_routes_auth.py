"""Routes, the error shape of unknown ones, API-key auth and the tenant it yields."""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.conftest import provider_entry, run_palaver
from tests.upstream import Upstream

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
KEYS = ["sk-alpha", "sk-beta"]


@pytest.fixture
def keyed(upstream: Upstream) -> Iterator[str]:
    with run_palaver([provider_entry(upstream)], server={"api_keys": KEYS}) as url:
        yield url


def test_health_needs_no_key(keyed: str) -> None:
    response = httpx.get(keyed + "/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_chat_without_key_is_401(keyed: str, path: str) -> None:
    response = httpx.post(keyed + path, json={"model": "m", "messages": USER})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/v1/models", "/models"])
def test_models_without_key_is_401(keyed: str, path: str) -> None:
    assert httpx.get(keyed + path).status_code == 401
    assert httpx.get(keyed + path, headers={"authorization": "Bearer sk-beta"}).status_code == 200


def test_wrong_key_raises_authentication_error(keyed: str) -> None:
    with (
        openai.OpenAI(base_url=keyed + "/v1", api_key="sk-wrong", max_retries=0) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.chat.completions.create(model="m", messages=USER)
    assert caught.value.code == "invalid_api_key"


def test_right_key_works_and_never_reaches_upstream(keyed: str, upstream: Upstream) -> None:
    with openai.OpenAI(base_url=keyed + "/v1", api_key="sk-alpha", max_retries=0) as client:
        client.chat.completions.create(model="m", messages=USER)
        list(client.chat.completions.create(model="m", messages=USER, stream=True))
    for request in upstream.chat_requests:
        assert "sk-alpha" not in str(request.headers)
        assert request.headers["authorization"] == "Bearer sk-upstream-up1"


def test_bad_input_still_401_first(keyed: str, upstream: Upstream) -> None:
    response = httpx.post(keyed + "/v1/chat/completions", content=b"{")
    assert response.status_code == 401
    assert upstream.requests == []


def test_unknown_route_is_openai_404(palaver_url: str) -> None:
    for method, path in [
        ("GET", "/index.html"),  # the playground is "/" (tests/test_playground.py)
        ("POST", "/v1/completions"),
        ("GET", "/v1/nope/x"),
    ]:
        response = httpx.request(method, palaver_url + path)
        assert response.status_code == 404
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "unknown_url"


def test_wrong_method_is_405(palaver_url: str) -> None:
    response = httpx.get(palaver_url + "/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unprefixed_alias_and_trailing_slash(palaver_url: str) -> None:
    for path in ["/chat/completions", "/v1/chat/completions/"]:
        response = httpx.post(palaver_url + path, json={"model": "m", "messages": USER})
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "[up1] hi"


def test_tenant_travels_with_the_request() -> None:
    from palaver.app import Palaver
    from palaver.config import settings_from
    from palaver.limits import tenant_of

    app = Palaver(settings_from({"server": {"api_keys": KEYS}}))
    scope = {"headers": [(b"authorization", b"Bearer sk-beta")]}
    assert app._authenticate(scope).tenant == tenant_of("sk-beta") != tenant_of("sk-alpha")
