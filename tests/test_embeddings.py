"""``POST /v1/embeddings`` through the official openai SDK, checked against OpenAI's spec:
relayed (round-robin, failover), cached by everything the vectors depend on, ``echo``'s
deterministic vectors, bad input named by its parameter."""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.openai_spec import check
from tests.upstream import Upstream


def sdk(url: str, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def test_relayed_as_the_sdk_asks(client: openai.OpenAI, upstream: Upstream) -> None:
    """The SDK asks for base64 unless told otherwise and decodes it; both forms arrive."""
    raw = client.embeddings.with_raw_response.create(model="m", input=["hello", "hi"])
    assert raw.headers["x-cache"] == "BYPASS"  # the cache is off in these tests
    reply = raw.parse()
    check("CreateEmbeddingResponse", reply.model_dump(mode="json"))
    assert [d.embedding for d in reply.data] == [[5.0, 0.0, 1.0], [2.0, 1.0, 1.0]]
    assert reply.model == "m@up1"
    assert reply.usage.prompt_tokens == 7
    [sent] = upstream.embedding_requests
    assert sent.body == {"model": "m", "input": ["hello", "hi"], "encoding_format": "base64"}
    assert sent.headers["authorization"] == "Bearer sk-upstream-up1"  # never the client's key
    floats = client.embeddings.create(
        model="m", input="hello", dimensions=2, encoding_format="float"
    )
    assert floats.data[0].embedding == [5.0, 0.0]
    tokens = client.embeddings.create(model="m", input=[[1, 2, 3], [4]])
    assert [d.embedding[0] for d in tokens.data] == [3.0, 1.0]
    assert upstream.chat_requests == []


def test_round_robin_and_failover() -> None:
    with (
        run_upstream("a") as a,
        run_upstream("b") as b,
        run_palaver([provider_entry(a), provider_entry(b)]) as url,
    ):
        client = sdk(url)
        models = [client.embeddings.create(model="m", input="x").model for _ in range(4)]
        assert sorted(models) == ["m@a", "m@a", "m@b", "m@b"]
        a.behave(status=503)
        assert {client.embeddings.create(model="m", input="x").model for _ in range(3)} == {"m@b"}
        b.behave(status=400, error={"error": {"message": "bad", "type": "x", "code": None}})
        with pytest.raises(openai.BadRequestError):
            client.embeddings.create(model="m", input="x")


def test_cached_by_what_the_vectors_depend_on(upstream: Upstream) -> None:
    server = {"api_keys": ["sk-alice", "sk-bob"]}
    with run_palaver([provider_entry(upstream)], cache={"enabled": True}, server=server) as url:
        alice, bob = sdk(url, "sk-alice"), sdk(url, "sk-bob")

        def cache_of(client: openai.OpenAI, **fields: Any) -> str:
            body = {"model": "m", "input": "x", **fields}
            reply = client.embeddings.with_raw_response.create(**body)
            return reply.headers["x-cache"]

        assert cache_of(alice) == "MISS"
        assert cache_of(alice) == "HIT"
        assert len(upstream.embedding_requests) == 1
        assert cache_of(bob) == "MISS"  # another key
        assert cache_of(alice, input="y") == "MISS"
        assert cache_of(alice, model="n") == "MISS"
        assert cache_of(alice, dimensions=2) == "MISS"
        assert cache_of(alice, encoding_format="float") == "MISS"
        assert cache_of(alice, encoding_format="float") == "HIT"
        assert len(upstream.embedding_requests) == 6
        headers = {"Authorization": "Bearer sk-alice", "Cache-Control": "no-cache"}
        fresh = httpx.post(
            url + "/v1/embeddings", json={"model": "m", "input": "x"}, headers=headers
        )
        assert fresh.headers["x-cache"] == "MISS"
        assert len(upstream.embedding_requests) == 7
        chat = alice.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
        assert chat.headers["x-cache"] == "MISS"  # embeddings and chat never share an entry


def test_echo_vectors_are_deterministic_unit_vectors() -> None:
    with run_palaver([{"name": "echo", "kind": "echo"}]) as url:
        client = sdk(url)
        first = client.embeddings.create(model="echo", input=["same", "other"])
        check("CreateEmbeddingResponse", first.model_dump(mode="json"))
        same, other = (d.embedding for d in first.data)
        assert len(same) == 1536
        assert math.isclose(sum(v * v for v in same), 1.0, rel_tol=1e-5)
        assert same != other
        again = client.embeddings.create(model="echo", input="same", encoding_format="float")
        assert again.data[0].embedding == same  # base64 and float forms agree exactly
        short = client.embeddings.create(model="echo", input="same", dimensions=8)
        assert len(short.data[0].embedding) == 8
        assert first.usage.prompt_tokens == 2
        raw = httpx.post(
            url + "/v1/embeddings",
            json={"model": "echo", "input": "same", "encoding_format": "base64"},
        ).json()
        decoded = base64.b64decode(raw["data"][0]["embedding"])
        assert list(struct.unpack("<1536f", decoded)) == same


BAD = [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["a", ""]}, "input[1]"),
    ({"input": ["a", 5]}, "input[1]"),
    ({"input": [[1, 2], "a"]}, "input[1]"),
    ({"input": [1, -2]}, "input[1]"),
    ({"input": [[]]}, "input[0]"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": {"text": "x"}}, "input"),
    ({"dimensions": 0}, "dimensions"),
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"model": ""}, "model"),
]


@pytest.mark.parametrize(("fields", "param"), BAD, ids=[p for _, p in BAD])
def test_bad_input_names_the_parameter(
    client: openai.OpenAI, upstream: Upstream, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "m", "input": "x", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/embeddings", body=body, cast_to=httpx.Response)
    check("Error", caught.value.body)
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert upstream.requests == []


def test_missing_input_and_unknown_model(upstream: Upstream) -> None:
    with run_palaver([provider_entry(upstream, models=["only"])]) as url:
        client = sdk(url)
        with pytest.raises(openai.BadRequestError) as caught:
            client.post("/embeddings", body={"model": "only"}, cast_to=httpx.Response)
        assert caught.value.body["param"] == "input"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="other", input="x")
        assert missing.value.code == "model_not_found"
