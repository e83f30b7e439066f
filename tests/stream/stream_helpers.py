"""Producing requests and reading the results, dead letters and stored sessions of one test."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from worker.samples import sample_requests


def make_requests(n: int, seed: int, prefix: str, candidates: int = 20) -> list[dict[str, Any]]:
    return sample_requests(n, seed=seed, prefix=prefix, candidates=candidates)


async def produce(
    bootstrap: str, topic: str, messages: list[bytes], keys: list[bytes | None] | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, m, key=(keys[i] if keys else None)) for i, m in enumerate(messages)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str, topic: str, until: int | set[str], timeout_s: float
) -> list[tuple[str | None, dict]]:
    """Read a topic from the beginning until `until` records, or until a record keyed by each id of
    a set `until` (duplicates, which at-least-once publishing allows, do not count toward that),
    or the timeout; then whatever else is already there, so duplicates are seen too."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[tuple[str | None, dict]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                for record in part:
                    records.append((record.key.decode() if record.key else None, orjson.loads(record.value)))
            done = until <= {key for key, _ in records} if isinstance(until, set) else len(records) >= until
            if not batch and (done or time.monotonic() > deadline):
                break
    finally:
        await consumer.stop()
    return records


async def full_calls(url: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Step rows with `calls` as recorded: prompt parts stored once joined back, defaults filled."""
    from worker.store.parts import joined

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            calls = await joined(conn, [r["calls"] for r in rows])
    finally:
        await engine.dispose()
    return [{**r, "calls": c} for r, c in zip(rows, calls, strict=True)]


async def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(text(sql), params)).mappings()]
    finally:
        await engine.dispose()
