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

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError

from ..retrying import until_done
from ..service import Reranker
from ..sessions import CRASH_LIMIT, SessionDone, run_session
from ..store.faults import is_db_down
from ..store.journal import GroupCommitWriter
from ..store.store import Store
from . import metrics
from .budget import ByteBudget

log = logging.getLogger(__name__)
# for cleanup that may meet the database gone; whether to wait is decided by `is_db_down`
DB_DOWN = (
    OSError,
    ConnectionError,
    OperationalError,
    DBAPIError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)


class WalkCrashed(RuntimeError):
    """A walk raised something that is not an outage; it was recorded and its lease released."""


class Runner:
    def __init__(
        self,
        store: Store,
        writer: GroupCommitWriter,
        reranker: Reranker,
        owner: str,
        concurrency: int,
        lease_s: float,
        on_done: asyncio.Event,
        crash_limit: int = CRASH_LIMIT,
    ) -> None:
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
        self.budget: ByteBudget | None = None  # request bytes in flight (LLM4RERANK_INFLIGHT_BYTES)
        self.held: dict[str, int] = {}
        self.orphan_bytes = 1_000_000  # what a resumed session counts for: its size is not read

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"walk-{i}") for i in range(self.concurrency)]

    async def submit(self, request_id: str, size: int | None = None) -> bool:
        """Queue a session unless this process already has it; waits while the queue is full or
        its bytes do not fit the budget, but not past `close` (the session is stored: a scan or
        another worker takes it up)."""
        if not self.accepting or request_id in self.active:
            return False
        self.active.add(request_id)
        queued = asyncio.ensure_future(self._enqueue(request_id, size))
        closing = asyncio.ensure_future(self._closing.wait())
        await asyncio.wait((queued, closing), return_when=asyncio.FIRST_COMPLETED)
        closing.cancel()
        if queued.done() and not queued.cancelled() and queued.exception() is None:
            return True
        queued.cancel()
        with suppress(asyncio.CancelledError):
            await queued
        if self.budget is not None:
            await self.budget.release(self.held.pop(request_id, 0))
        self.active.discard(request_id)
        return False

    async def _enqueue(self, request_id: str, size: int | None) -> None:
        if self.budget is not None:
            self.held[request_id] = await self.budget.acquire(self.orphan_bytes if size is None else size)
        await self.queue.put(request_id)

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
                if self.budget is not None:
                    await self.budget.release(self.held.pop(request_id, 0))
                self.queue.task_done()

    async def _until_done(self, request_id: str) -> None:
        """Run the session until it is stored finished: database outages are waited out (never
        counted), crashes are recorded and retried until the session is failed for them."""

        async def attempt() -> SessionDone | None:
            try:
                return await run_session(
                    self.store,
                    self.writer,
                    self.reranker,
                    request_id,
                    self.owner,
                    self.lease_s,
                    self.crash_limit,
                )
            except Exception as exc:
                if is_db_down(exc):  # a value the database refused is no outage: a crash
                    raise
                await self._crashed(request_id, exc)
                raise WalkCrashed(str(exc)) from exc

        done = await until_done(
            attempt,
            f"PostgreSQL (session {request_id})",
            retry_on=lambda e: isinstance(e, WalkCrashed) or is_db_down(e),
            outage=is_db_down,
            flag=metrics.BACKPRESSURE.labels("postgres"),
        )
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

    async def drain(self, grace_s: float) -> None:
        """Stop taking sessions; let walks in flight finish within the grace period, then cancel
        them (their steps so far are stored, so they resume elsewhere) and release their leases."""
        self.close()
        while not self.queue.empty():
            dropped = self.queue.get_nowait()
            self.active.discard(dropped)
            if self.budget is not None:
                await self.budget.release(self.held.pop(dropped, 0))
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
