"""Runs walks for recorded sessions with a bounded number in flight.

The queue in front of the walks is as long as the concurrency limit: when it is full, the inbox
waits, so the consumer stops fetching (backpressure) and memory stays flat under any backlog.
An LLM outage is handled inside the walk (retries until the deadline, then the heuristic answers).
When PostgreSQL is down, a session waits and is retried from its stored steps; it is never failed
for an outage. A walk that raises is a crash: its lease is released at once, it is retried, and
after `crash_limit` crashes the session ends `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from asyncpg import exceptions as pg_errors
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential

from ..service import Reranker
from ..sessions import CRASH_LIMIT, run_session
from ..store.journal import GroupCommitWriter
from ..store.store import Store
from . import metrics

log = logging.getLogger(__name__)
# the database unreachable, restarting or shutting down: waited out, never a crash
DB_DOWN = (OSError, ConnectionError, OperationalError, DBAPIError, asyncio.TimeoutError,
           pg_errors.OperatorInterventionError, pg_errors.PostgresConnectionError,
           pg_errors.TooManyConnectionsError)


class WalkCrashed(RuntimeError):
    """A walk raised something that is not an outage; it was recorded and its lease released."""


class Runner:
    def __init__(self, store: Store, writer: GroupCommitWriter, reranker: Reranker, owner: str,
                 concurrency: int, lease_s: float, on_done: asyncio.Event,
                 crash_limit: int = CRASH_LIMIT) -> None:
        self.store, self.writer, self.reranker = store, writer, reranker
        self.owner, self.lease_s = owner, lease_s
        self.concurrency = concurrency
        self.crash_limit = crash_limit
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=concurrency)
        self.active: set[str] = set()
        self.on_done = on_done
        self.accepting = True
        self._closing = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.running: set[str] = set()

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"walk-{i}")
                       for i in range(self.concurrency)]

    async def submit(self, request_id: str) -> bool:
        """Queue a session unless this process already has it; waits while the queue is full,
        but not past `close` (the session is stored: a scan or another worker takes it up)."""
        if not self.accepting or request_id in self.active:
            return False
        self.active.add(request_id)
        put = asyncio.ensure_future(self.queue.put(request_id))
        closing = asyncio.ensure_future(self._closing.wait())
        await asyncio.wait((put, closing), return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if put.done():
            return True
        put.cancel()
        self.active.discard(request_id)
        return False

    def close(self) -> None:
        """Take no more sessions (shutdown): a waiting `submit` returns at once."""
        self.accepting = False
        self._closing.set()

    async def _work(self) -> None:
        while True:
            request_id = await self.queue.get()
            self.running.add(request_id)
            metrics.IN_FLIGHT.inc()
            try:
                await self._until_done(request_id)
            except Exception:  # recording the crash failed too (database gone): a scan retries
                log.exception("session %s left for a later retry", request_id)
            finally:
                metrics.IN_FLIGHT.dec()
                self.running.discard(request_id)
                self.active.discard(request_id)
                self.queue.task_done()

    async def _until_done(self, request_id: str) -> None:
        """Run the session until it is stored finished: database outages are waited out (never
        counted), crashes are recorded and retried until the session is failed for them."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((*DB_DOWN, WalkCrashed)),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            reraise=True,
            before_sleep=self._waiting,
        ):
            with attempt:
                try:
                    done = await run_session(self.store, self.writer, self.reranker, request_id,
                                             self.owner, self.lease_s, self.crash_limit)
                except DB_DOWN:
                    raise
                except Exception as exc:
                    await self._crashed(request_id, exc)
                    raise WalkCrashed(str(exc)) from exc
        metrics.BACKPRESSURE.labels("postgres").set(0)
        if done is not None:
            result, outcome, replayed = done
            if outcome is None:
                metrics.REQUESTS.labels(result.status).inc()
                metrics.CRASH_FAILED.inc()
            else:
                if replayed:
                    metrics.RESUMED.inc()
                metrics.observe(result, outcome, replayed)
        self.on_done.set()

    async def _crashed(self, request_id: str, exc: BaseException) -> None:
        metrics.CRASHES.inc()
        log.exception("walk of %s crashed; lease released for a retry", request_id)
        await self.store.crashed(request_id, self.owner, f"{type(exc).__name__}: {exc}")

    @staticmethod
    def _waiting(state: object) -> None:
        outcome = getattr(state, "outcome", None)
        exc = outcome.exception() if outcome is not None else None
        if not isinstance(exc, WalkCrashed):
            metrics.BACKPRESSURE.labels("postgres").set(1)
            log.warning("a session waits for the database: %s", exc)

    async def drain(self, grace_s: float) -> None:
        """Stop taking sessions; let walks in flight finish within the grace period, then cancel
        them (their steps so far are stored, so they resume elsewhere) and release their leases."""
        self.close()
        while not self.queue.empty():
            self.active.discard(self.queue.get_nowait())
            self.queue.task_done()
        with suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while self.running:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        unfinished = set(self.running)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with suppress(*DB_DOWN):  # the database down: the leases expire instead
            await asyncio.wait_for(self.store.release(self.owner), 2.0)
        if unfinished:
            log.info("released %d unfinished session(s) for another worker", len(unfinished))
