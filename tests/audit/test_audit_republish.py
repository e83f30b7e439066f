"""Kafka-side replay against the real local Kafka: stored requests are published again under new
request_ids with a `replay-of` header, read back from a topic of this test only."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from audit_helpers import KAFKA

from worker.audit.filters import parse_filters
from worker.config import Settings
from worker.replay.republish import REPLAY_OF_HEADER, republish_from_store
from worker.schemas import RerankRequest

pytestmark = pytest.mark.integration


async def _consume(topic: str, expected: int, timeout_s: float = 30.0) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records += part
    finally:
        await consumer.stop()
    return records


async def test_republish_from_store(populated: Any) -> None:
    topic = f"test.audit.{uuid.uuid4().hex[:8]}.requests"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
        settings = Settings(kafka_bootstrap=KAFKA, request_topic=topic, database_url=populated.db.url)
        user = "u3"
        filters = parse_filters(user=user)
        pairs = await republish_from_store(settings, filters, suffix="~k1")
        originals = [o for _, o in pairs]
        assert pairs and all(new == f"{orig}~k1" for new, orig in pairs)
        assert len(set(originals)) == len(originals)
        assert all(o.startswith("gen-") for o in originals)  # replays are not republished by default

        records = await _consume(topic, len(pairs))
        assert len(records) == len(pairs)
        by_key = {r.key.decode(): r for r in records}
        assert set(by_key) == {new for new, _ in pairs}
        for new, orig in pairs:
            record = by_key[new]
            body = json.loads(record.value)
            request = RerankRequest.model_validate(body)  # still a valid request
            assert request.request_id == new and request.user.user_id == user
            assert dict(record.headers)[REPLAY_OF_HEADER] == orig.encode()

        with pytest.raises(ValueError, match="suffix"):
            await republish_from_store(settings, filters, suffix="")
    finally:
        await admin.delete_topics([topic])
        await admin.close()


async def test_reset_group_offsets_to_a_time() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.errors import CommitFailedError

    from worker.audit.offsets import reset_offsets

    topic, group = f"test.audit.{uuid.uuid4().hex[:8]}.offsets", f"test-audit-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA)
        await producer.start()
        base = 1_700_000_000_000
        for i in range(10):
            await producer.send_and_wait(topic, b"{}", key=f"r{i}".encode(), timestamp_ms=base + i * 1000)
        await producer.stop()
        to = datetime.fromtimestamp((base + 4500) / 1000, tz=UTC)
        dry = await reset_offsets(KAFKA, group, topic, to, execute=False)
        assert [(m.partition, m.committed, m.target) for m in dry] == [(0, None, 5)]
        done = await reset_offsets(KAFKA, group, topic, to, execute=True)
        assert done[0].target == 5
        later = await reset_offsets(KAFKA, group, topic, datetime.now(UTC), execute=False)
        assert (later[0].committed, later[0].target) == (5, 10)  # nothing newer: the end

        member = AIOKafkaConsumer(topic, bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
        await member.start()
        try:
            await member.getmany(timeout_ms=3000)  # joined: the group has a member now
            with pytest.raises(CommitFailedError):  # Kafka refuses while the group has members
                await reset_offsets(KAFKA, group, topic, to - timedelta(days=1), execute=True)
        finally:
            await member.stop()
        tp = TopicPartition(topic, 0)
        check = AIOKafkaConsumer(bootstrap_servers=KAFKA, group_id=group, enable_auto_commit=False)
        await check.start()
        check.assign([tp])
        assert await check.committed(tp) == 5
        await check.stop()
    finally:
        await admin.delete_topics([topic])
        await admin.close()
