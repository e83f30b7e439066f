"""The inbox's stream: take_events' timed wait for a batch sleeps until something arrives.

The whole path (real Kafka, a lone request answered, batches acknowledged after they are stored)
is covered by the worker's end-to-end, inbox-batch and fault tests, which run on this stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import pytest

from worker.stream.idle_stream import IdleStream

WITHIN_S = 0.005  # the inbox's linger


def _stream(stream_class: type[Any]) -> Any:
    app = faust.App("test-idle", broker="memory://", Stream=stream_class, autodiscover=False)
    return app.stream(app.channel())


async def _batch_wait_ended(stream: Any, before_s: float) -> bool:
    wait = asyncio.create_task(stream.wait_for_stopped(asyncio.Event(), timeout=WITHIN_S))
    await asyncio.sleep(before_s)
    ended = wait.done()
    wait.cancel()
    return ended


async def test_faust_stream_wakes_every_linger_while_idle() -> None:
    """What IdleStream fixes: the stock stream's wait ends after `within` with nothing to take."""
    assert await _batch_wait_ended(_stream(faust.Stream), before_s=0.1)


async def test_idle_stream_sleeps_until_something_arrives() -> None:
    stream = _stream(IdleStream)
    wait = asyncio.create_task(stream.wait_for_stopped(asyncio.Event(), timeout=WITHIN_S))
    await asyncio.sleep(0.1)
    assert not wait.done()
    for processor in stream._processors:  # an event passing through the stream
        await processor(b"request")
    await asyncio.wait_for(wait, timeout=5)  # then the batch goes out within its linger


async def test_an_arrival_before_the_wait_is_not_waited_for_again() -> None:
    stream = _stream(IdleStream)
    for processor in stream._processors:
        await processor(b"request")
    await asyncio.wait_for(stream.wait_for_stopped(asyncio.Event(), timeout=WITHIN_S), timeout=5)
    assert not await _batch_wait_ended(stream, before_s=0.1)  # nothing since: asleep again


async def test_a_full_buffer_is_not_left_waiting_for_an_arrival() -> None:
    """A batch of one fills the buffer before any later processor sees the event."""
    full = asyncio.Event()
    full.set()
    stream = _stream(IdleStream)
    assert await asyncio.wait_for(stream.wait_for_stopped(full, timeout=WITHIN_S), timeout=5) is False


@pytest.mark.parametrize("stream_class", [faust.Stream, IdleStream])
async def test_an_untimed_wait_is_faust_own(stream_class: type[Any]) -> None:
    stream = _stream(stream_class)
    full = asyncio.Event()
    wait = asyncio.create_task(stream.wait_for_stopped(full))
    await asyncio.sleep(0.02)
    assert not wait.done()
    full.set()
    assert await asyncio.wait_for(wait, timeout=5) is False
