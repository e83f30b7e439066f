"""`llm4rerank worker`: a faust-streaming app on aiokafka.

The agent only validates and records (concurrency 1, so faust's offset bookkeeping is never
asked to track gaps); walks run in the Runner, results leave through the outbox. An offset is
committed only after its message is in PostgreSQL or in the DLQ, and a session is finished only
by a stored result, so a crash at any moment loses nothing and repeats no stored step.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import faust
import openai
from mode import Service
from prometheus_client import start_http_server

from ..config import Settings
from ..errors import ConfigError
from ..policies.chat import OpenAIChat, is_retryable
from ..retrying import until_done
from ..schemas import Source
from ..service import Reranker, limits_of
from ..store.journal import GroupCommitWriter
from ..store.store import Store
from . import metrics
from .budget import ByteBudget
from .idle_stream import IdleStream
from .inbox import Inbox, Message
from .outbox import Publisher
from .runner import DB_DOWN, Runner
from .topics import ensure_topics

log = logging.getLogger("llm4rerank.worker")
# after the grace period, the rest of the shutdown (steps, outbox, leases) gets this long
STOP_MARGIN_S = 5.0
# the inbox waits at most this long for a fuller batch
INBOX_LINGER_S = 0.005


def inbox_batch(settings: Settings) -> int:
    """Messages the inbox records per transaction, and the stream buffer's size: no more
    requests than the byte budget admits at the largest request size."""
    budget = settings.inflight_bytes // settings.max_payload_bytes
    return max(1, min(settings.inbox_batch, settings.concurrency, budget))


def create_app(settings: Settings, datadir: Path) -> faust.App:
    return faust.App(
        settings.consumer_group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        autodiscover=False,
        web_enabled=False,
        datadir=str(datadir),
        topic_partitions=4,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_commit_every=100,
        broker_commit_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=settings.kafka_max_message_bytes,
        # memory: one fetch holds about one large message per partition, and the stream buffer
        # holds no more requests than the byte budget admits at the largest request size
        consumer_max_fetch_size=settings.kafka_max_message_bytes,
        stream_buffer_maxsize=max(4, inbox_batch(settings)),
        broker_max_poll_records=200,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=max(settings.kafka_session_timeout_s / 5, 0.5),
        broker_rebalance_timeout=max(settings.kafka_session_timeout_s * 2, 10.0),
        Stream=IdleStream,
    )


class WorkerService(Service):
    """Owns the store, the walks, the outbox and the metrics endpoint for one worker process."""

    def __init__(self, app: faust.App, settings: Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app, self.settings = app, settings
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.store = Store(settings.database_url)
        self.writer = GroupCommitWriter(self.store, on_commit=metrics.STEP_COMMITS.observe)
        self.chat = OpenAIChat(settings)
        self.chat.breaker.on_change = lambda down: metrics.BACKPRESSURE.labels("llm").set(int(down))
        self.reranker = Reranker(settings, self.chat)
        self.done = asyncio.Event()
        self.rescan = asyncio.Event()
        self.runner = Runner(
            self.store,
            self.writer,
            self.reranker,
            self.owner,
            settings.concurrency,
            settings.lease_s,
            self.done,
            settings.crash_limit,
        )
        self.runner.budget = ByteBudget(settings.inflight_bytes)
        self.runner.orphan_bytes = settings.max_payload_bytes
        self.inbox = Inbox(
            self.store,
            self.runner,
            self.reranker,
            limits_of(settings),
            self._send_and_wait,
            settings.dlq_topic,
            deployment=settings.deployment,
            result_topic=settings.result_topic,
            dlq_payload_max_bytes=settings.dlq_payload_max_bytes,
            max_message_bytes=settings.kafka_max_message_bytes,
        )
        self.publisher = Publisher(
            self.store,
            self._send,
            settings.result_topic,
            self.done,
            settings.deployment,
            parallel=settings.outbox_rounds,
        )
        self._loops: list[asyncio.Task[None]] = []
        self.stopped_cleanly = False

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> Any:
        producer = await self.app.maybe_start_producer()
        return await producer.send(topic, key, value, None, None, None)

    async def _send_and_wait(self, topic: str, key: bytes | None, value: bytes) -> Any:
        return await (await self._send(topic, key, value))

    async def on_start(self) -> None:
        start_http_server(self.settings.metrics_port)
        await _wait_for(self.store.ping, "PostgreSQL at LLM4RERANK_DATABASE_URL")
        await _wait_for(lambda: ensure_topics(self.settings), "Kafka at LLM4RERANK_KAFKA_BOOTSTRAP")
        try:
            await self.chat.check()
        except ConfigError as exc:
            if "unreachable" not in str(exc):
                raise
            log.warning("%s; until it answers, requests get the heuristic's list at their deadline", exc)
        except openai.OpenAIError as exc:  # failing (5xx, 429, timeouts): an outage, not a mistake
            if not is_retryable(exc):
                raise
            log.warning(
                "LLM endpoint failing at start (%s), answer format not probed; until it "
                "answers, requests get the heuristic's list at their deadline",
                exc,
            )
        self.runner.start()
        self.writer.start()
        self._loops = [
            asyncio.create_task(self.publisher.run(), name="outbox"),
            asyncio.create_task(self._leases(), name="leases"),
            asyncio.create_task(self._orphans(), name="orphans"),
            asyncio.create_task(self._partitions(), name="partitions"),
            asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag"),
        ]
        log.info(
            "worker %s: %d walks at once, metrics on :%d, LLM %s (%s); %d start-up objects frozen",
            self.owner,
            self.settings.concurrency,
            self.settings.metrics_port,
            self.settings.llm_base_url,
            self.settings.llm_model,
            freeze_startup_objects(),
        )

    async def on_stop(self) -> None:
        """Bounded in every state: walks get the grace period, everything after it a few seconds;
        whatever cannot finish in time (database or broker down) is left to the next worker."""
        grace = self.settings.shutdown_grace_s
        log.info("stopping: finishing walks in flight (up to %.0fs)", grace)
        await self.runner.drain(grace)
        with suppress(Exception):
            await asyncio.wait_for(self.writer.stop(), 1.5)
        with suppress(Exception):
            await asyncio.wait_for(self.publisher.publish_once(), 1.5)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        with suppress(Exception):
            await asyncio.wait_for(self.chat.close(), 0.5)
        with suppress(Exception):
            await asyncio.wait_for(self.store.close(), 0.5)
        self.stopped_cleanly = True
        log.info("stopped cleanly")

    async def _leases(self) -> None:
        """Renew this worker's leases every third of a lease; sooner after a failed renewal."""
        while True:
            try:
                await self.store.renew(self.owner, self.settings.lease_s)
                await asyncio.sleep(self.settings.lease_s / 3)
            except DB_DOWN:
                await asyncio.sleep(0.5)

    async def _partitions(self) -> None:
        """Keep the store's time partitions created ahead (PostgreSQL): at start, then hourly."""
        from ..store.partitions import ensure_ahead

        while True:
            with suppress(*DB_DOWN):
                created = await ensure_ahead(
                    self.store.engine, self.settings.partition_interval, self.settings.partitions_ahead
                )
                if created:
                    log.info("created partitions %s", ", ".join(created))
            await asyncio.sleep(3600)

    async def _orphans(self) -> None:
        """Resume this deployment's unfinished sessions nobody holds: at start, on rebalance,
        and every quarter lease, so a dead worker's sessions resume within 1.25 leases (the
        README states 1.5, leaving room for a loaded machine)."""
        while True:
            with suppress(*DB_DOWN):
                for request_id in await self.store.orphans(self.settings.deployment):
                    if not self.runner.accepting:
                        return
                    await self.runner.submit(request_id)
            with suppress(TimeoutError):
                await asyncio.wait_for(self.rescan.wait(), timeout=self.settings.lease_s / 4)
            self.rescan.clear()


async def _wait_for(probe: Any, what: str, attempts: int = 30) -> None:
    """Wait about `attempts` seconds for a dependency at start, then name the fix."""
    try:
        await until_done(probe, what, attempts=attempts, first_s=1.0, max_s=1.0)
    except Exception as exc:
        raise ConfigError(f"cannot reach {what} ({exc}); start it or fix the setting") from None


def build(settings: Settings, datadir: Path) -> tuple[faust.App, WorkerService]:
    app = create_app(settings, datadir)
    service = WorkerService(app, settings)
    requests = app.topic(settings.request_topic, value_serializer="raw", key_serializer="raw")

    @app.agent(requests, concurrency=1)
    async def inbox(stream: faust.StreamT[Any]) -> None:
        # a batch is recorded in one transaction; take_events acknowledges its offsets after the
        # body has run, i.e. once every message is stored or dead-lettered
        async for events in stream.take_events(inbox_batch(settings), INBOX_LINGER_S):  # type: ignore[attr-defined]
            try:
                await service.inbox.accept_batch([message_of(e.message) for e in events])
            except BaseException:
                never_ack(events)
                raise
            with suppress(Exception):
                last = {e.message.tp: e.message.offset for e in events}
                for tp, offset in last.items():
                    lag = app.consumer.highwater(tp) - offset - 1
                    metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(lag, 0))

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app: faust.App, assigned: Any, **_: Any) -> None:
        service.rescan.set()

    return app, service


def message_of(message: Any) -> Message:
    return Message(
        message.value,
        Source(topic=message.topic, partition=message.partition, offset=message.offset),
        [(k, v) for k, v in (message.headers or [])],
        message.timestamp,
    )


def never_ack(events: Sequence[Any]) -> None:
    """A batch interrupted (shutdown) must not be acknowledged: take_events acks its events when
    its generator is closed, even after the body raised. A message marked acked is skipped by
    faust's ack, so its offset is not committed and the message is read again."""
    for event in events:
        event.message.acked = True


class BoundedWorker(faust.Worker):
    """faust's worker, whose shutdown cannot hang: the first SIGTERM (or SIGINT) starts the
    normal stop and a watchdog thread that ends the process after the grace period plus a
    margin, whatever state the stop is stuck in; a second signal ends it at once."""

    def __init__(self, *args: Any, service: WorkerService, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.service = service
        self._watchdog: threading.Timer | None = None

    def _on_sigterm(self) -> None:
        self._bound_shutdown()
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._bound_shutdown()
        super()._on_sigint()

    def _bound_shutdown(self) -> None:
        if self._watchdog is not None:
            self._exit_now("second signal")
        self.service.runner.close()  # an inbox waiting for a walk slot lets faust stop now
        limit = self.service.settings.shutdown_grace_s + STOP_MARGIN_S
        self._watchdog = threading.Timer(limit, self._exit_now, args=(f"{limit:.0f}s passed",))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _exit_now(self, why: str) -> None:
        code = 0 if self.service.stopped_cleanly else 1
        log.warning(
            "shutdown did not finish (%s); exiting now with %d (leases not released "
            "expire within LLM4RERANK_LEASE_S)",
            why,
            code,
        )
        with suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def freeze_startup_objects() -> int:
    """Move what start-up left alive (modules, the openai and pydantic types: about 240,000
    objects) out of the collector's reach, so a full collection scans only what requests made
    (about 20,000 objects): measured over 4,900 steps, the worker's full collections fell from
    1.5 s to 0.42 s of CPU. Returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def use_uvloop() -> bool:
    """uvloop under faust (mode's own switch, before any loop exists): less CPU per event; the
    standard asyncio loop when it is not installed."""
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    import mode.loop

    mode.loop.use("uvloop")
    return True


def run_worker(settings: Settings, loglevel: str = "info") -> None:
    if not use_uvloop():
        log.info("uvloop not installed; running on the standard asyncio loop")
    datadir = settings.state_dir / settings.consumer_group
    datadir.mkdir(parents=True, exist_ok=True)
    app, service = build(settings, datadir)
    worker = BoundedWorker(app, service, loglevel=loglevel, quiet=True, service=service)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    worker.execute_from_commandline()
