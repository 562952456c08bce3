"""A client that goes away cancels the upstream request, streaming or not."""

from __future__ import annotations

import asyncio
import gc
import time

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from palaver.asgi import CancelOnDisconnect
from tests.upstream import Upstream

USER: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "one two three four five six"}
]


def _wait_for_disconnect(upstream: Upstream, since: float, within: float = 1.0) -> float:
    deadline = since + within + 0.5
    while time.monotonic() < deadline:
        if upstream.disconnects:
            return upstream.disconnects[0] - since
        time.sleep(0.01)
    raise AssertionError("the upstream never saw its connection closed")


def test_dropped_stream_closes_upstream(palaver_url: str, upstream: Upstream) -> None:
    upstream.behave(chunk_delay=0.5)
    client = openai.OpenAI(base_url=palaver_url + "/v1", api_key="k", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    first = next(iter(stream))
    assert first.choices[0].delta.role == "assistant"
    stream.close()
    client.close()
    closed_at = time.monotonic()
    assert _wait_for_disconnect(upstream, closed_at) < 1.0


@pytest.mark.parametrize("stream", [False, True])
def test_dropped_pending_request_closes_upstream(
    palaver_url: str, upstream: Upstream, stream: bool
) -> None:
    upstream.behave(hang=True)
    with (
        openai.OpenAI(base_url=palaver_url + "/v1", api_key="k", max_retries=0, timeout=0.5) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.chat.completions.create(model="m", messages=USER, stream=stream)
    assert _wait_for_disconnect(upstream, time.monotonic()) < 1.0
    assert len(upstream.chat_requests) == 1


async def test_async_client_cancel_closes_upstream(palaver_url: str, upstream: Upstream) -> None:
    import asyncio

    upstream.behave(first_byte_delay=5)
    async with openai.AsyncOpenAI(base_url=palaver_url + "/v1", api_key="k", max_retries=0) as c:
        task = asyncio.create_task(c.chat.completions.create(model="m", messages=USER))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    cancelled_at = time.monotonic()
    for _ in range(150):  # the upstream runs in another thread: poll it
        if upstream.disconnects:
            break
        await asyncio.sleep(0.01)
    assert upstream.disconnects
    assert upstream.disconnects[0] - cancelled_at < 1.0


async def test_a_watched_request_leaves_no_cycle_for_the_collector() -> None:
    """A request still running after ``WATCH_AFTER`` gets a watcher task, cancelled at its end;
    nothing of it may wait for the cyclic collector (under load every request is watched, and
    such garbage held uvicorn's state of each: most of the worker's memory peak)."""
    never = asyncio.Event()

    async def receive() -> dict[str, str]:
        await never.wait()  # the client stays
        return {"type": "http.disconnect"}

    async def watched() -> None:
        async with CancelOnDisconnect(receive):
            await asyncio.sleep(CancelOnDisconnect.WATCH_AFTER * 2)

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            await asyncio.create_task(watched())
        await asyncio.sleep(0.01)  # the cancelled watchers finish
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, CancelOnDisconnect)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
