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


class Publisher:
    def __init__(
        self, store: Store, send: Send, topic: str, wake: asyncio.Event, deployment: str | None = None
    ) -> None:
        self.store, self.send, self.topic, self.wake = store, send, topic, wake
        self.deployment = deployment

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
        while (n := await self.store.publish_batch(self._send_batch, deployment=self.deployment)) > 0:
            sent += n
            metrics.PUBLISHED.inc(n)
        return sent

    async def run(self, interval_s: float = 0.5) -> None:
        """Publish on every wake-up (and every `interval_s`); a broker or database outage is
        waited out with the results kept in the outbox."""
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=interval_s)
            self.wake.clear()
            await until_done(self.publish_once, "Kafka or PostgreSQL (the outbox)")
