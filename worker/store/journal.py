"""Journals that persist steps as walks take them, batching many walks' steps per commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from ..engine.steps import UNSTORABLE, StepRecord
from ..retrying import until_done
from .faults import is_data_error, sqlstate
from .store import Store

log = logging.getLogger(__name__)


class GroupCommitWriter:
    """Each `write` waits until its step is committed; concurrent writes share one transaction.

    While the database is down, writes wait and are retried: walks stall (backpressure) instead of
    losing steps. When the database refuses a value (a data error), the batch is written one step
    at a time: the others commit, and the refused step is stored once more with every string
    escaped and a note; if even that is refused, only its own walk gets the error.
    """

    def __init__(
        self,
        store: Store,
        max_batch: int = 500,
        linger_s: float = 0.0,
        on_commit: Callable[[int], None] | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.linger_s = linger_s
        self.on_commit = on_commit
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
        """One commit at a time; each takes every step queued meanwhile. Under load the steps
        that arrive while a commit runs form the next group; when idle a step is committed after
        one pass of the event loop (every walk ready to run adds its step first) plus `linger_s`,
        so grouping costs no fixed wait."""
        while True:
            batch = [await self.queue.get()]
            await asyncio.sleep(self.linger_s)
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            await self._commit(batch)
            if self.on_commit is not None:
                self.on_commit(len(batch))

    async def _commit(self, batch: list[tuple[int, StepRecord, asyncio.Future[None]]]) -> None:
        """Commit the batch; a refused value sends it one step at a time, an outage is waited out
        with the batch kept."""
        pending = batch

        async def attempt() -> None:
            nonlocal pending
            try:
                await self.store.add_steps([(sid, step) for sid, step, _ in pending])
            except Exception as exc:
                if not is_data_error(exc):
                    self.healthy = False
                    raise
                pending = await self._one_by_one(pending)
                if pending:  # the others failed for a reason other than their data
                    self.healthy = False
                    raise
                return
            for _, _, done in pending:
                if not done.done():
                    done.set_result(None)

        await until_done(attempt, "PostgreSQL (the step writer)")
        self.healthy = True

    async def _one_by_one(
        self, batch: list[tuple[int, StepRecord, asyncio.Future[None]]]
    ) -> list[tuple[int, StepRecord, asyncio.Future[None]]]:
        """Write each step alone; returns those that failed for a reason other than their data."""
        left = []
        for sid, step, done in batch:
            try:
                await self._write_or_escape(sid, step)
            except Exception as exc:
                if not is_data_error(exc):
                    left.append((sid, step, done))
                elif not done.done():
                    done.set_exception(exc)
                continue
            if not done.done():
                done.set_result(None)
        return left

    async def _write_or_escape(self, sid: int, step: StepRecord) -> None:
        try:
            await self.store.add_steps([(sid, step)])
        except Exception as exc:
            if not is_data_error(exc):
                raise
            log.warning(
                "step %d of session %d refused by the database (%s); storing it escaped",
                step.step,
                sid,
                sqlstate(exc) or type(exc).__name__,
            )
            escaped = StepRecord.model_validate(_escaped(step.model_dump(mode="json")))
            escaped.notes.append(
                f"stored with unstorable characters escaped as \\uXXXX text "
                f"(the database refused it: {sqlstate(exc) or type(exc).__name__})"
            )
            await self.store.add_steps([(sid, escaped)])


def _escaped(value: Any) -> Any:
    """Every string with U+0000 and unpaired surrogates written as \\uXXXX text."""
    if isinstance(value, str):
        return UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    if isinstance(value, list):
        return [_escaped(v) for v in value]
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}
    return value


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
