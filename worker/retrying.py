"""Waiting out a dependency (PostgreSQL, Kafka): one tenacity policy for every loop that must not
give up, with the same backoff, the same log line and the same backpressure gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

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
    failed: int = 0,
) -> AsyncRetrying:
    """The retry policy while waiting for `what` (the dependency, and who waits): exponential
    backoff from `first_s` to `max_s`, a warning per wait, `flag` raised while waiting; errors
    `retry_on` refuses (and the last of `attempts`) are raised to the caller. Only the errors
    `outage` accepts mean the dependency is away (flag and "waiting for"); the others are retried
    failures of the work itself. `failed`: attempts already made (and waited after) before it."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        _announce(what, exc, wait, outage, flag)

    return AsyncRetrying(
        # a cancellation (shutdown) ends the wait: it is never a failure to wait out
        retry=retry_if_exception(lambda exc: not isinstance(exc, asyncio.CancelledError) and retry_on(exc)),
        wait=wait_exponential(multiplier=first_s * 2**failed, min=first_s, max=max_s),
        stop=stop_after_attempt(attempts - failed) if attempts is not None else stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


def _announce(
    what: str,
    exc: BaseException | None,
    wait: float,
    outage: Callable[[BaseException], bool],
    flag: Flag | None,
) -> None:
    if exc is not None and not outage(exc):
        log.warning("%s failed (%s); retrying in %.1fs", what, exc, wait)
        return
    if flag is not None:
        flag.set(1)
    log.warning("waiting for %s (%s); retrying in %.1fs", what, exc, wait)


async def until_done(
    call: Callable[[], Awaitable[T]],
    what: str,
    *,
    retry_on: Callable[[BaseException], bool] = _always,
    outage: Callable[[BaseException], bool] = _always,
    flag: Flag | None = None,
    attempts: int | None = None,
    first_s: float = FIRST_WAIT_S,
    max_s: float = MAX_WAIT_S,
) -> T:
    """`call()` retried under `waiting(what, ...)`; the flag is lowered once it is through,
    whether it succeeded or gave up (then nothing waits any more).

    The first attempt runs before any policy is built: nearly every call succeeds at once, and a
    tenacity policy is a cluster of reference cycles (about forty objects) that only the garbage
    collector frees. After a failure it waits `first_s`, the policy's first wait, and the policy
    goes on from the second attempt with the same backoff and the same attempts in all."""

    async def attempt() -> T:  # tenacity would call a lambda returning a coroutine as sync code
        return await call()

    try:
        try:
            return await attempt()
        except Exception as exc:  # a cancellation is no Exception: it ends the wait, as below
            if not retry_on(exc) or (attempts is not None and attempts <= 1):
                raise
            _announce(what, exc, first_s, outage, flag)
        await asyncio.sleep(first_s)
        policy = waiting(
            what,
            retry_on=retry_on,
            outage=outage,
            flag=flag,
            attempts=attempts,
            first_s=first_s,
            max_s=max_s,
            failed=1,
        )
        result: T = await policy(attempt)
        return result
    finally:
        if flag is not None:
            flag.set(0)
