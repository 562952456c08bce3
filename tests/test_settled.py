"""A store write started for a request runs to its end, whatever happens to the request."""

from __future__ import annotations

import asyncio

import pytest

from palaver.errors import ServiceUnavailable
from palaver.service import settled


async def _write(seconds: float, fail: bool, done: list[str]) -> str:
    await asyncio.sleep(seconds)
    if fail:
        raise ServiceUnavailable("store down")
    done.append("stored")
    return "stored"


async def test_a_write_that_succeeds_ends_the_request_as_a_success() -> None:
    done: list[str] = []
    request = asyncio.create_task(settled(_write(0.1, False, done)))
    await asyncio.sleep(0.02)
    request.cancel()  # the client left, or palaver stops, while the write runs
    await asyncio.sleep(0.02)
    request.cancel()  # twice, even
    assert await request == "stored"  # not cancelled: its client is told it was stored
    assert done == ["stored"]
    assert request.cancelling() == 0


async def test_a_write_that_fails_lets_the_cancellation_go_on() -> None:
    request = asyncio.create_task(settled(_write(0.1, True, [])))
    await asyncio.sleep(0.02)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request


async def test_without_a_cancellation_the_outcome_is_the_write_s() -> None:
    assert await settled(_write(0, False, [])) == "stored"
    with pytest.raises(ServiceUnavailable):
        await settled(_write(0, True, []))
