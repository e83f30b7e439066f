"""The LLM breaker: opens after failures in a row, lets one probe through at a time, closes on the
first answer, and never keeps a caller past its deadline."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_kit import until

from worker.policies.breaker import Breaker, EndpointDown


async def test_closed_until_the_threshold_then_one_probe_at_a_time() -> None:
    breaker = Breaker(threshold=3, first_probe_s=0.05, max_probe_s=0.3)
    for _ in range(2):
        breaker.failed()
    assert not breaker.open
    breaker.failed()
    assert breaker.open

    inside = 0
    peak = 0
    probes = 0
    down = True

    async def caller() -> None:
        nonlocal inside, peak, probes
        async with breaker.admit(time.monotonic() + 5):
            probes += 1
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.02)
            inside -= 1
            breaker.failed() if down else breaker.answered()

    tasks = [asyncio.create_task(caller()) for _ in range(10)]
    await until(lambda: probes >= 3)  # three probes, one after another
    assert peak == 1, "while open, only one caller at a time may probe"
    down = False
    breaker.answered()  # the endpoint is back: everyone waiting goes at once
    await asyncio.wait_for(asyncio.gather(*tasks), 2)
    assert not breaker.open and breaker.failures == 0
    assert peak > 1, "once closed, callers are no longer serialised"


async def test_a_waiting_caller_leaves_at_its_deadline() -> None:
    breaker = Breaker(threshold=1, first_probe_s=10.0)
    breaker.failed()
    started = time.monotonic()
    with pytest.raises(EndpointDown, match="endpoint down"):
        async with breaker.admit(time.monotonic() + 0.2):
            pass
    assert time.monotonic() - started < 1.0


async def test_a_caller_past_its_deadline_never_probes() -> None:
    breaker = Breaker(threshold=1, first_probe_s=0.0)
    breaker.failed()
    with pytest.raises(EndpointDown):
        async with breaker.admit(time.monotonic() - 0.01):
            pass
    assert not breaker._probing


async def test_zero_threshold_never_opens() -> None:
    breaker = Breaker(threshold=0)
    for _ in range(100):
        breaker.failed()
    assert not breaker.open
    async with breaker.admit(time.monotonic() + 1):
        pass


def test_tells_its_listener_when_it_opens_and_closes() -> None:
    """The worker exports this as llm4rerank_backpressure{dependency="llm"}."""
    breaker = Breaker(threshold=2)
    changes: list[bool] = []
    breaker.on_change = changes.append
    breaker.failed()
    assert changes == []
    breaker.failed()
    breaker.failed()  # already open: no second notice
    breaker.answered()
    breaker.answered()  # already closed
    assert changes == [True, False]
