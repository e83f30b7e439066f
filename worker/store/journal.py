"""Journals that persist steps as walks take them, batching many walks' steps per commit."""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from ..engine.steps import StepRecord
from .store import Store

log = logging.getLogger(__name__)


class GroupCommitWriter:
    """Each `write` waits until its step is committed; concurrent writes share one transaction.

    While the database is down, writes wait and are retried: walks stall (backpressure) instead of
    losing steps.
    """

    def __init__(self, store: Store, max_batch: int = 500, linger_s: float = 0.005) -> None:
        self.store = store
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.queue: asyncio.Queue[tuple[int, StepRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="step-writer")

    async def stop(self) -> None:
        if self._task is not None:
            while not self.queue.empty() and self.healthy:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def write(self, session_id: int, step: StepRecord) -> None:
        await self.enqueue(session_id, step)

    def enqueue(self, session_id: int, step: StepRecord) -> asyncio.Future[None]:
        """Queue a step; the future resolves once it is committed."""
        self.start()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((session_id, step, done))
        return done

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(self.linger_s)
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            delay = 0.2
            while True:
                try:
                    await self.store.add_steps([(sid, step) for sid, step, _ in batch])
                    self.healthy = True
                    break
                except Exception as exc:  # the database is down or restarting: keep the batch
                    self.healthy = False
                    log.warning("step write failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for _, _, done in batch:
                if not done.done():
                    done.set_result(None)


class SessionJournal:
    """Journal of one session; steps already persisted (a resumed walk's) are not written again.

    A step with LLM calls is committed before the walk goes on (so no call is ever repeated);
    a step without (heuristic, Stop) is only queued, as a resume recomputes it the same way, and
    `flush` waits for all of them before the result is stored."""

    def __init__(self, writer: GroupCommitWriter, session_id: int, persisted: int = 0) -> None:
        self.writer = writer
        self.session_id = session_id
        self.persisted = persisted
        self._pending: list[asyncio.Future[None]] = []

    async def record(self, step: StepRecord) -> None:
        if step.step <= self.persisted:
            return
        done = self.writer.enqueue(self.session_id, step)
        if step.calls:
            await done
        else:
            self._pending.append(done)

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)
