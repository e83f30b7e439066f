"""Waiting out a dependency (PostgreSQL, Kafka): one tenacity policy for every loop that must not
give up, with the same backoff, the same log line and the same backpressure gauge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Policy:
    """How a loop waits for its dependency: exponential backoff from `first_s` to `max_s`, a
    warning per wait, `flag` raised while waiting; errors `retry_on` refuses (and the last of
    `attempts`) are raised to the caller. Only the errors `outage` accepts mean the dependency is
    away (flag and "waiting for"); the others are retried failures of the work itself."""

    retry_on: Callable[[BaseException], bool] = _always
    outage: Callable[[BaseException], bool] = _always
    flag: Flag | None = None
    attempts: int | None = None
    first_s: float = FIRST_WAIT_S
    max_s: float = MAX_WAIT_S

    def announce(self, what: str, exc: BaseException | None, wait: float) -> None:
        if exc is not None and not self.outage(exc):
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, wait)
            return
        if self.flag is not None:
            self.flag.set(1)
        log.warning("waiting for %s (%s); retrying in %.1fs", what, exc, wait)


def waiting(what: str, policy: Policy, failed: int = 0) -> AsyncRetrying:
    """`policy` as tenacity's retry loop, for `what` (the dependency, and who waits); `failed`:
    attempts already made (and waited after) before it."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        policy.announce(what, exc, state.next_action.sleep if state.next_action is not None else 0.0)

    attempts, first_s = policy.attempts, policy.first_s
    return AsyncRetrying(
        # a cancellation (shutdown) ends the wait: it is never a failure to wait out
        retry=retry_if_exception(
            lambda exc: not isinstance(exc, asyncio.CancelledError) and policy.retry_on(exc)
        ),
        wait=wait_exponential(multiplier=first_s * 2**failed, min=first_s, max=policy.max_s),
        stop=stop_after_attempt(attempts - failed) if attempts is not None else stop_never,
        before_sleep=before_sleep,
        reraise=True,
    )


async def first_then_retry(
    attempt: Callable[[], Awaitable[T]],
    after_failure: Callable[[Exception], float | None],
    loop: Callable[[], AsyncRetrying],
) -> T:
    """`attempt()` once, then, if it failed and `after_failure` gives a wait (None: raise the
    failure), that wait and the tenacity loop `loop()` from the second attempt on.

    The first attempt runs before the loop is built: nearly every call succeeds at once, and a
    tenacity loop is a cluster of reference cycles (about forty objects) that only the garbage
    collector frees. `loop()` must count its attempts and waits from the second attempt."""
    try:
        return await attempt()
    except Exception as exc:  # a cancellation is no Exception: it is never retried
        wait = after_failure(exc)
        if wait is None:
            raise
    await asyncio.sleep(wait)
    result: T = await loop()(attempt)
    return result


async def until_done(call: Callable[[], Awaitable[T]], what: str, **options: Any) -> T:
    """`call()` retried under `Policy(**options)`; the flag is lowered once it is through,
    whether it succeeded or gave up (then nothing waits any more). After a first failure it waits
    `first_s`, the policy's first wait, and the loop goes on with the same backoff and the same
    attempts in all (first_then_retry)."""
    policy = Policy(**options)

    async def attempt() -> T:  # tenacity would call a lambda returning a coroutine as sync code
        return await call()

    def after_failure(exc: Exception) -> float | None:
        if not policy.retry_on(exc) or (policy.attempts is not None and policy.attempts <= 1):
            return None
        policy.announce(what, exc, policy.first_s)
        return policy.first_s

    try:
        return await first_then_retry(attempt, after_failure, lambda: waiting(what, policy, failed=1))
    finally:
        if policy.flag is not None:
            policy.flag.set(0)
