"""The outbox publishes a result as soon as it is stored, without waiting for the broker to
acknowledge the batch before it, and never sends a result twice while doing so (real PostgreSQL,
real Kafka, sim-llm over HTTP)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from service_kit import SIM_MODEL
from stream_helpers import make_requests, query

from worker.config import Settings
from worker.policies.chat import OpenAIChat
from worker.schemas import RerankRequest, Source
from worker.service import Reranker
from worker.sessions import run_session
from worker.store.journal import GroupCommitWriter
from worker.store.store import Store
from worker.stream.outbox import Publisher

pytestmark = pytest.mark.integration


async def _published(url: str, request_id: str) -> bool:
    rows = await query(url, "select published_at from sessions where request_id = :rid", rid=request_id)
    return bool(rows) and rows[0]["published_at"] is not None


async def _until(probe: Any, timeout_s: float = 60) -> None:
    async with asyncio.timeout(timeout_s):
        while not await probe():
            await asyncio.sleep(0.05)


async def test_a_result_is_published_while_the_batch_before_it_awaits_its_acks(
    sim_llm, pg_url, kafka
) -> None:
    """The first result's acknowledgement is held back; the second, stored meanwhile, is sent,
    acknowledged and marked published before it. The loop's interval is an hour, so only the
    wake-up can have started either round. Each result is sent exactly once."""
    sim = sim_llm("--seed", "3", "--latency-ms", "0")
    settings = Settings(_env_file=None, llm_base_url=sim.base_url, llm_model=SIM_MODEL, database_url=pg_url)
    tag = uuid.uuid4().hex[:8]
    topic, deployment = f"outbox.{tag}.results", f"outbox-{tag}"
    first, second = (RerankRequest.model_validate(r) for r in make_requests(2, seed=5, prefix=f"ob{tag}"))
    chat = OpenAIChat(settings)
    reranker = Reranker(settings, chat)
    store = Store(pg_url)
    writer = GroupCommitWriter(store)
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all")
    await producer.start()
    await store.receive(
        [(first, Source(topic="t")), (second, Source(topic="t"))],
        run_config=reranker.stored_config,
        deployment=deployment,
        result_topic=topic,
    )
    gate, first_sent = asyncio.Event(), asyncio.Event()
    sent: list[bytes] = []

    async def send(to: str, key: bytes, value: bytes) -> Awaitable[Any]:
        ack = await producer.send(to, value, key=key)
        sent.append(key)
        if key != first.request_id.encode():
            return ack
        first_sent.set()

        async def held() -> Any:
            await gate.wait()
            return await ack

        return held()

    wake = asyncio.Event()
    publisher = Publisher(store, send, topic, wake, deployment, parallel=2)
    loop = asyncio.create_task(publisher.run(interval_s=3600))
    try:
        assert await run_session(store, writer, reranker, first.request_id, "w1", 60) is not None
        wake.set()
        async with asyncio.timeout(60):
            await first_sent.wait()
        assert await run_session(store, writer, reranker, second.request_id, "w1", 60) is not None
        wake.set()
        await _until(lambda: _published(pg_url, second.request_id))
        assert not await _published(pg_url, first.request_id)
        gate.set()
        await _until(lambda: _published(pg_url, first.request_id))
        assert sorted(sent) == sorted([first.request_id.encode(), second.request_id.encode()])
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka, auto_offset_reset="earliest")
        await consumer.start()
        try:
            keys: list[bytes] = []
            async with asyncio.timeout(60):
                while len(keys) < 2:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        keys += [r.key for r in records]
            assert sorted(keys) == sorted(sent)
        finally:
            await consumer.stop()
    finally:
        gate.set()
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await producer.stop()
        await writer.stop()
        await chat.close()
        await store.close()
