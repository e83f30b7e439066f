"""Runs walks for recorded sessions with a bounded number in flight.

The queue in front of the walks is as long as the concurrency limit: when it is full, the inbox
waits, so the consumer stops fetching (backpressure) and memory stays flat under any backlog.
When PostgreSQL or the LLM endpoint is down, a session waits and is retried from its stored
steps; it is never failed for an outage.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

import asyncpg
from sqlalchemy.exc import DBAPIError, OperationalError

from ..policies.chat import LLMUnavailable, OpenAIChat
from ..service import Reranker
from ..sessions import run_session
from ..store.faults import is_db_down
from ..store.journal import GroupCommitWriter
from ..store.store import Store
from . import metrics
from .budget import ByteBudget

log = logging.getLogger(__name__)
DB_DOWN = (OSError, ConnectionError, OperationalError, DBAPIError, asyncio.TimeoutError,
           asyncpg.PostgresError, asyncpg.InterfaceError)  # asyncpg's own, raised at connect


class LLMGate:
    """One shared wait for the endpoint to come back, probed with backoff."""

    def __init__(self, chat: OpenAIChat | None) -> None:
        self.chat = chat
        self._probe: asyncio.Task[None] | None = None

    async def wait_healthy(self) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.create_task(self._wait())
        await asyncio.shield(self._probe)

    async def _wait(self) -> None:
        metrics.BACKPRESSURE.labels("llm").set(1)
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                if self.chat is not None:
                    await self.chat.client.models.list()
                break
            except Exception as exc:  # any failure means: still down
                log.warning("LLM endpoint still unavailable (%s)", exc)
                delay = min(delay * 2, 10.0)
        metrics.BACKPRESSURE.labels("llm").set(0)


class Runner:
    def __init__(self, store: Store, writer: GroupCommitWriter, reranker: Reranker, owner: str,
                 concurrency: int, lease_s: float, on_done: asyncio.Event) -> None:
        self.store, self.writer, self.reranker = store, writer, reranker
        self.owner, self.lease_s = owner, lease_s
        self.concurrency = concurrency
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=concurrency)
        self.active: set[str] = set()
        self.gate = LLMGate(reranker.chat if isinstance(reranker.chat, OpenAIChat) else None)
        self.on_done = on_done
        self.accepting = True
        self._tasks: list[asyncio.Task[None]] = []
        self.running: set[str] = set()
        self.budget: ByteBudget | None = None  # request bytes in flight (LLM4RERANK_INFLIGHT_BYTES)
        self.held: dict[str, int] = {}
        self.orphan_bytes = 1_000_000  # what a resumed session counts for: its size is not read

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work(), name=f"walk-{i}")
                       for i in range(self.concurrency)]

    async def submit(self, request_id: str, size: int | None = None) -> bool:
        """Queue a session unless this process already has it; waits while the queue is full or
        its bytes do not fit the budget."""
        if not self.accepting or request_id in self.active:
            return False
        self.active.add(request_id)
        if self.budget is not None:
            self.held[request_id] = await self.budget.acquire(
                self.orphan_bytes if size is None else size)
        await self.queue.put(request_id)
        return True

    async def _work(self) -> None:
        while True:
            request_id = await self.queue.get()
            self.running.add(request_id)
            metrics.IN_FLIGHT.inc()
            try:
                await self._until_done(request_id)
            finally:
                metrics.IN_FLIGHT.dec()
                self.running.discard(request_id)
                self.active.discard(request_id)
                if self.budget is not None:
                    await self.budget.release(self.held.pop(request_id, 0))
                self.queue.task_done()

    async def _until_done(self, request_id: str) -> None:
        delay = 0.2
        while True:
            try:
                done = await run_session(self.store, self.writer, self.reranker, request_id,
                                         self.owner, self.lease_s)
            except LLMUnavailable as exc:
                log.warning("%s waits for the LLM endpoint: %s", request_id, exc)
                await self.gate.wait_healthy()
                continue
            except Exception as exc:
                if not is_db_down(exc):  # a value the database refused is not an outage either
                    log.exception("walk of %s crashed; its session stays unfinished for a retry",
                                  request_id)
                    with suppress(*DB_DOWN):  # not renewed as if running: an orphan to retry
                        await self.store.release(self.owner, [request_id])
                    return
                metrics.BACKPRESSURE.labels("postgres").set(1)
                log.warning("%s waits for the database: %s", request_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            metrics.BACKPRESSURE.labels("postgres").set(0)
            if done is not None:
                result, outcome, replayed = done
                if replayed:
                    metrics.RESUMED.inc()
                metrics.observe(result, outcome, replayed)
                self.on_done.set()
            return

    async def drain(self, grace_s: float) -> None:
        """Stop taking sessions; let walks in flight finish within the grace period, then cancel
        them (their steps so far are stored, so they resume elsewhere) and release their leases."""
        self.accepting = False
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
        with suppress(*DB_DOWN):
            await self.store.release(self.owner)
        if unfinished:
            log.info("released %d unfinished session(s) for another worker", len(unfinished))
