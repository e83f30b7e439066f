"""Publishes this deployment's stored results; re-publishes whatever Kafka did not acknowledge."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import orjson

from ..retrying import until_done
from ..schemas import RerankResult
from ..store.store import Store
from . import metrics

log = logging.getLogger(__name__)
Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[Any]]]
BATCH = 500  # results per round's transaction


class Publisher:
    def __init__(
        self,
        store: Store,
        send: Send,
        topic: str,
        wake: asyncio.Event,
        deployment: str | None = None,
        parallel: int = 1,
    ) -> None:
        self.store, self.send, self.topic, self.wake = store, send, topic, wake
        self.deployment = deployment
        self.parallel = parallel

    async def _send_batch(self, rows: list[dict[str, Any]]) -> None:
        """Each result goes to the topic recorded with its session (this one's for older rows)."""
        acks = [
            await self.send(
                row.get("result_topic") or self.topic,
                row["request_id"].encode(),
                orjson.dumps(RerankResult.model_validate(row["result"]).model_dump(mode="json")),
            )
            for row in rows
        ]
        await asyncio.gather(*acks)

    async def publish_once(self) -> int:
        sent = 0
        while (n := await self._publish_batch()) > 0:
            sent += n
        return sent

    async def _publish_batch(self) -> int:
        n = await self.store.publish_batch(self._send_batch, limit=BATCH, deployment=self.deployment)
        metrics.PUBLISHED.inc(n)
        return n

    async def _publish_ready(self) -> None:
        """What is ready now: batches until one is not full (a result stored later wakes the
        loop again), an outage waited out with the results kept in the outbox."""

        async def ready() -> None:
            while await self._publish_batch() >= BATCH:
                pass

        await until_done(ready, "Kafka or PostgreSQL (the outbox)")

    def _parallel(self) -> int:
        """Rounds in flight at once: on PostgreSQL a round's rows stay locked (SKIP LOCKED) until
        Kafka acknowledged them, so another round takes only the others; elsewhere one."""
        return self.parallel if self.store.engine.dialect.name == "postgresql" else 1

    async def run(self, interval_s: float = 0.5) -> None:
        """Publish on every wake-up (and every `interval_s`). With `parallel` above 1 a wake-up
        does not wait for the acknowledgements of the round before it: a new round starts at once,
        up to `parallel` in flight, so a result waits for one select and one send, not for the
        previous batch's round trip to the broker (more, smaller rounds: more CPU per result)."""
        rounds: set[asyncio.Task[None]] = set()
        try:
            while True:
                with suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), timeout=interval_s)
                self.wake.clear()
                while len(rounds) >= self._parallel():
                    done, rounds = await asyncio.wait(rounds, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # a round that gave up ends the loop, as it always did
                rounds.add(asyncio.create_task(self._publish_ready(), name="outbox-round"))
                done = {task for task in rounds if task.done()}
                rounds -= done
                for task in done:
                    task.result()
        finally:
            for task in rounds:
                task.cancel()
            await asyncio.gather(*rounds, return_exceptions=True)
