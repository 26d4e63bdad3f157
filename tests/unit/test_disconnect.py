"""cancel_on_disconnect with a real Starlette Request whose ASGI `receive` reports the client leaving."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from textgen.api.disconnect import cancel_on_disconnect
from textgen.api.errors import ApiError

POLL_S = 0.01


def request_whose_client_leaves(after_s: float | None) -> Request:
    """A request whose `receive` says `http.disconnect` once `after_s` has passed (never if None)."""
    gone = asyncio.Event()
    if after_s is not None:
        asyncio.get_running_loop().call_later(after_s, gone.set)

    async def receive():
        await gone.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/generate", "headers": []}, receive)


class Work:
    """A piece of work that records how it ended."""

    def __init__(self, seconds: float, result: object = "answer") -> None:
        self.seconds = seconds
        self.result = result
        self.cancelled = False
        self.finished = asyncio.Event()  # its `finally` ran

    async def __call__(self) -> object:
        try:
            await asyncio.sleep(self.seconds)
            return self.result
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.finished.set()


def test_a_client_leaving_cancels_the_work_and_raises_client_disconnected():
    async def scenario():
        work = Work(seconds=30)
        with pytest.raises(ApiError) as gone:
            await asyncio.wait_for(
                cancel_on_disconnect(request_whose_client_leaves(0.05), work(), poll_s=POLL_S), timeout=5
            )
        return gone.value, work

    error, work = asyncio.run(scenario())
    assert (error.type, error.status) == ("client_disconnected", 499)
    assert work.cancelled
    assert work.finished.is_set()  # it unwound before the error was raised: its slot is already free


def test_work_that_finishes_first_returns_its_result_and_is_not_cancelled():
    async def scenario():
        work = Work(seconds=0.05, result={"text": "done"})
        result = await cancel_on_disconnect(request_whose_client_leaves(None), work(), poll_s=POLL_S)
        return result, work

    result, work = asyncio.run(scenario())
    assert result == {"text": "done"}
    assert not work.cancelled


def test_an_error_of_the_work_reaches_the_caller_unchanged():
    async def failing():
        await asyncio.sleep(0.02)
        raise ValueError("bad input")

    async def scenario():
        await cancel_on_disconnect(request_whose_client_leaves(None), failing(), poll_s=POLL_S)

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(scenario())


def test_cancelling_the_caller_cancels_the_work_too():
    async def scenario():
        work = Work(seconds=30)
        caller = asyncio.create_task(cancel_on_disconnect(request_whose_client_leaves(None), work(), poll_s=POLL_S))
        await asyncio.sleep(0.05)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await asyncio.wait_for(work.finished.wait(), timeout=1)
        return work

    assert asyncio.run(scenario()).cancelled
