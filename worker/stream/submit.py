"""`llm4rerank submit`: produce JSONL requests to Kafka; with --wait, print results as they arrive."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import IO

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ..config import Settings
from ..schemas import request_id_of
from .topics import ensure_topics


async def _end_positions(consumer: AIOKafkaConsumer, partitions: dict[str, int]) -> None:
    parts = [TopicPartition(t, p) for t, n in partitions.items() for p in range(n)]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)


async def submit(
    settings: Settings,
    lines: Iterable[bytes],
    *,
    wait: bool = False,
    timeout_s: float = 120.0,
    out: IO[bytes] | None = None,
    headers: dict[str, list[tuple[str, bytes]]] | None = None,
) -> tuple[int, int]:
    """Returns (sent, answered); answered counts results and dead letters seen with --wait."""
    out = out or sys.stdout.buffer
    partitions = await ensure_topics(settings)
    consumer = None
    if wait:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        await _end_positions(
            consumer, {t: partitions[t] for t in (settings.result_topic, settings.dlq_topic)}
        )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    pending: set[str] = set()
    sent = unnamed = 0
    try:
        acks = []
        for raw in lines:
            raw = raw.rstrip(b"\r\n")
            if not raw.strip():
                continue
            request_id = request_id_of(raw)
            if request_id:
                pending.add(request_id)
            else:
                unnamed += 1
            acks.append(
                await producer.send(
                    settings.request_topic,
                    raw,
                    key=request_id.encode() if request_id else None,
                    headers=(headers or {}).get(request_id or "", None),
                )
            )
            sent += 1
        await asyncio.gather(*acks)
    finally:
        await producer.stop()
    print(f"submitted {sent} message(s) to {settings.request_topic}", file=sys.stderr)
    if consumer is None:
        return sent, 0
    answered = 0
    try:
        async with asyncio.timeout(timeout_s):
            while pending or unnamed > 0:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        key = record.key.decode() if record.key else None
                        if key in pending:
                            pending.discard(key)
                        elif key is None and record.topic == settings.dlq_topic and unnamed > 0:
                            unnamed -= 1
                        else:
                            continue
                        answered += 1
                        value = orjson.loads(record.value)
                        if record.topic == settings.dlq_topic:
                            value = {"dead_letter": True, **value}
                        out.write(orjson.dumps(value) + b"\n")
                        out.flush()
    except TimeoutError:
        print(
            f"timed out after {timeout_s:.0f}s with {len(pending) + unnamed} without an answer",
            file=sys.stderr,
        )
    finally:
        await consumer.stop()
    return sent, answered
