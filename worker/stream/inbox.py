"""The inbox: validate a message, send it to the DLQ with the reason, or record it durably in
PostgreSQL before its offset can be committed, then hand it to the runner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from ..errors import RequestError
from ..schemas import Limits, Source, dead_letter, parse_request
from ..service import Reranker
from ..store.store import Store
from . import metrics
from .runner import DB_DOWN, Runner

log = logging.getLogger(__name__)
REPLAY_HEADER = "replay-of"


class Inbox:
    def __init__(self, store: Store, runner: Runner, reranker: Reranker, limits: Limits,
                 send_and_wait: Callable[[str, bytes | None, bytes], Awaitable[Any]],
                 dlq_topic: str, deployment: str | None = None,
                 result_topic: str | None = None) -> None:
        self.store, self.runner, self.reranker, self.limits = store, runner, reranker, limits
        self.send_and_wait = send_and_wait
        self.dlq_topic = dlq_topic
        self.deployment, self.result_topic = deployment, result_topic

    async def accept(self, value: bytes | None, source: Source,
                     headers: list[tuple[str, bytes]] | None = None,
                     timestamp: float | None = None) -> None:
        """Never raises: every message ends recorded, queued for a walk, or in the DLQ.

        `timestamp` (the Kafka message's, in seconds) starts the request's clock; receipt when
        the message has none."""
        raw = value or b""
        try:
            request = parse_request(raw, self.limits)
            self.reranker.plan(request)
        except RequestError as exc:
            await self._dead_letter(raw, exc, source)
            return
        replay_of = next((v.decode("utf-8", "replace") for k, v in headers or []
                          if k == REPLAY_HEADER), None)
        delay = 0.2
        while True:
            try:
                seen = await self.store.receive(
                    [(request, source)], replay_of=replay_of,
                    replay_mode="kafka" if replay_of else None, receipts=[receipt_time(timestamp)],
                    run_config=self.reranker.stored_config, deployment=self.deployment,
                    result_topic=self.result_topic)
                break
            except DB_DOWN as exc:
                metrics.BACKPRESSURE.labels("postgres").set(1)
                log.warning("inbox waits for the database: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        metrics.BACKPRESSURE.labels("postgres").set(0)
        if seen:
            metrics.DUPLICATES.inc()
            self.runner.on_done.set()  # its stored result is queued for publishing again
            return
        await self.runner.submit(request.request_id)

    async def _dead_letter(self, raw: bytes, error: RequestError, source: Source) -> None:
        record = dead_letter(raw, error, source)
        metrics.INVALID.labels(error.code).inc()
        key = record.request_id.encode() if record.request_id else None
        delay = 0.2
        while True:
            try:
                await self.send_and_wait(self.dlq_topic, key,
                                         orjson.dumps(record.model_dump(mode="json")))
                return
            except Exception as exc:  # broker unavailable: the message must not be lost
                log.warning("DLQ publish failed (%s); retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


def receipt_time(timestamp: float | None) -> datetime | None:
    """A Kafka timestamp as a datetime; None (receipt) when the message carries none."""
    if timestamp is None or timestamp <= 0:
        return None
    return datetime.fromtimestamp(timestamp, UTC)
