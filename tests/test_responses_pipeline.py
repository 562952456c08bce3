"""A Responses request is a chat call inside the one pipeline (CONTRACT §9): failover,
single-flight, disconnect cancellation and the stored-once rule hold for it as for chat."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import openai
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.test_disconnect import _wait_for_disconnect
from tests.upstream import Upstream


@pytest.fixture
def pair() -> Iterator[tuple[Upstream, Upstream]]:
    with run_upstream("a") as a, run_upstream("b") as b:
        yield a, b


def test_failover_before_the_first_byte(pair: tuple[Upstream, Upstream]) -> None:
    a, b = pair
    a.behave(status=503)
    with run_palaver([provider_entry(a), provider_entry(b)]) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        answers = {client.responses.create(model="m", input="hi").output_text for _ in range(3)}
        with client.responses.stream(model="m", input="hi") as stream:
            answers.add(stream.get_final_response().output_text)
    assert answers == {"[b] hi"}
    assert a.chat_requests  # it was tried, failed, and cooled down


async def test_identical_requests_share_one_upstream_call(upstream: Upstream) -> None:
    upstream.behave(first_byte_delay=0.5)
    with run_palaver([provider_entry(upstream)], cache={"enabled": True}) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as c:
            replies = await asyncio.gather(
                *(c.responses.with_raw_response.create(model="m", input="same") for _ in range(8))
            )
    assert len(upstream.chat_requests) == 1
    assert sorted(r.headers["x-cache"] for r in replies) == ["HIT"] * 7 + ["MISS"]
    responses = [r.parse() for r in replies]
    assert {r.output_text for r in responses} == {"[up1] same"}
    assert len({r.id for r in responses}) == 8  # each its own response


def test_dropped_stream_cancels_upstream_and_stores_nothing(
    client: openai.OpenAI, upstream: Upstream
) -> None:
    upstream.behave(chunk_delay=0.5)
    stream = client.responses.create(model="m", input="one two three four five", stream=True)
    created = next(iter(stream))
    assert created.type == "response.created"
    response_id = created.response.id
    stream.close()
    closed_at = time.monotonic()
    assert _wait_for_disconnect(upstream, closed_at) < 1.0
    upstream.behave()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response_id)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="m", input="x", previous_response_id=response_id)


def test_upstream_error_stores_nothing(client: openai.OpenAI, upstream: Upstream) -> None:
    conversation = client.conversations.create()
    upstream.behave(status=500, times=1)
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="m", input="lost", conversation=conversation.id)
    assert list(client.conversations.items.list(conversation.id)) == []
    done = client.responses.create(model="m", input="kept", conversation=conversation.id)
    assert done.output_text == "[up1] kept"
    assert len(list(client.conversations.items.list(conversation.id))) == 2
