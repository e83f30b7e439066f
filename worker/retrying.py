"""Waiting out a dependency (PostgreSQL, Kafka): one tenacity policy for every loop that must not
give up, with the same backoff, the same log line and the same backpressure gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_never,
    wait_exponential,
)

T = TypeVar("T")
log = logging.getLogger(__name__)
FIRST_WAIT_S, MAX_WAIT_S = 0.2, 5.0


class Flag(Protocol):
    """A gauge child (`BACKPRESSURE.labels("postgres")`): 1 while waiting, 0 once through."""

    def set(self, value: float) -> None: ...


def _always(_: BaseException) -> bool:
    return True


def waiting(
    what: str,
    *,
    retry_on: Callable[[BaseException], bool] = _always,
    outage: Callable[[BaseException], bool] = _always,
    flag: Flag | None = None,
    attempts: int | None = None,
    first_s: float = FIRST_WAIT_S,
    max_s: float = MAX_WAIT_S,
) -> AsyncRetrying:
    """The retry policy while waiting for `what` (the dependency, and who waits): exponential
    backoff from `first_s` to `max_s`, a warning per wait, `flag` raised while waiting; errors
    `retry_on` refuses (and the last of `attempts`) are raised to the caller. Only the errors
    `outage` accepts mean the dependency is away (flag and "waiting for"); the others are retried
    failures of the work itself."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if exc is not None and not outage(exc):
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, wait)
            return
        if flag is not None:
            flag.set(1)
        log.warning("waiting for %s (%s); retrying in %.1fs", what, exc, wait)

    return AsyncRetrying(
        # a cancellation (shutdown) ends the wait: it is never a failure to wait out
        retry=retry_if_exception(lambda exc: not isinstance(exc, asyncio.CancelledError) and retry_on(exc)),
        wait=wait_exponential(multiplier=first_s, min=first_s, max=max_s),
        stop=stop_after_attempt(attempts) if attempts is not None else stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


async def until_done(call: Callable[[], Awaitable[T]], what: str, **policy: Any) -> T:
    """`call()` retried under `waiting(what, **policy)`; the flag is lowered once it is through,
    whether it succeeded or gave up (then nothing waits any more)."""

    async def attempt() -> T:  # tenacity would call a lambda returning a coroutine as sync code
        return await call()

    try:
        result: T = await waiting(what, **policy)(attempt)
    finally:
        flag = policy.get("flag")
        if flag is not None:
            flag.set(0)
    return result
