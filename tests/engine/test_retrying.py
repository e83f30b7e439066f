"""The one wait-for-a-dependency policy: retries what it is told to, raises the rest, and raises
the backpressure flag only while it waits."""

from __future__ import annotations

import asyncio

import pytest

from worker import retrying
from worker.retrying import until_done


class Flag:
    def __init__(self) -> None:
        self.values: list[float] = []

    def set(self, value: float) -> None:
        self.values.append(value)


def test_waits_out_failures_and_lowers_the_flag() -> None:
    calls, flag = [], Flag()

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    result = asyncio.run(until_done(flaky, "the test", flag=flag, first_s=0.001, max_s=0.002))
    assert result == "ok"
    assert len(calls) == 3
    assert flag.values == [1, 1, 0]


def test_raises_what_it_must_not_retry_at_once() -> None:
    calls = []

    async def refused() -> None:
        calls.append(1)
        raise ValueError("bad data")

    with pytest.raises(ValueError, match="bad data"):
        asyncio.run(until_done(refused, "the test", retry_on=lambda e: isinstance(e, OSError), first_s=0.001))
    assert calls == [1]


def test_gives_up_after_its_attempts() -> None:
    calls = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError):
        asyncio.run(until_done(down, "the test", attempts=4, first_s=0.001, max_s=0.001))
    assert len(calls) == 4


def test_awaits_a_lambda_returning_a_coroutine() -> None:
    sent = []

    async def send(value: str) -> str:
        sent.append(value)
        return value

    assert asyncio.run(until_done(lambda: send("x"), "the test")) == "x"
    assert sent == ["x"]


def test_only_outages_raise_the_flag(caplog: pytest.LogCaptureFixture) -> None:
    """A retried failure of the work itself (a crashed walk) is no dependency being away."""
    errors = [RuntimeError("walk crashed"), ConnectionError("down"), RuntimeError("walk crashed")]
    flag = Flag()

    async def work() -> str:
        if errors:
            raise errors.pop(0)
        return "done"

    with caplog.at_level("WARNING", logger="worker.retrying"):
        result = asyncio.run(
            until_done(
                work,
                "PostgreSQL",
                outage=lambda e: isinstance(e, OSError),
                flag=flag,
                first_s=0.001,
                max_s=0.002,
            )
        )
    assert result == "done"
    assert flag.values == [1, 0]
    lines = [r.getMessage().split(" (")[0] for r in caplog.records]
    assert lines == ["PostgreSQL failed", "waiting for PostgreSQL", "PostgreSQL failed"]


def test_a_cancelled_wait_ends_instead_of_retrying() -> None:
    """Cancelling the task (shutdown) while its call is in flight ends the wait: the
    cancellation is not taken for one more failure to wait out."""
    calls = []

    async def main() -> None:
        started = asyncio.Event()

        async def hangs() -> None:
            calls.append(1)
            started.set()
            await asyncio.Event().wait()

        task = asyncio.create_task(until_done(hangs, "the test", first_s=0.001, max_s=0.002))
        await started.wait()
        task.cancel()
        async with asyncio.timeout(30):
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())
    assert calls == [1]


def test_the_backoff_goes_on_from_the_first_wait(caplog: pytest.LogCaptureFixture) -> None:
    """The first failure is waited out before the policy exists; the policy's waits go on from
    there: first_s, then doubling up to max_s, the attempts counted in all."""
    calls = []

    async def down() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with caplog.at_level("WARNING"), pytest.raises(ConnectionError):
        asyncio.run(until_done(down, "the test", attempts=5, first_s=0.1, max_s=0.4))
    assert len(calls) == 5
    waits = [r.getMessage().rsplit("retrying in ", 1)[1] for r in caplog.records]
    assert waits == ["0.1s", "0.2s", "0.4s", "0.4s"]


def test_a_call_through_at_once_builds_no_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_policy(*_: object, **__: object) -> None:
        raise AssertionError("a retry policy was built for a call that succeeded at once")

    monkeypatch.setattr(retrying, "waiting", no_policy)
    flag = Flag()

    async def ok() -> str:
        return "ok"

    assert asyncio.run(until_done(ok, "the test", flag=flag)) == "ok"
    assert flag.values == [0]
