"""Kafka-side replay (`llm4rerank submit --from-store FILTERS`): publish stored requests again to
the requests topic under new request_ids, so the running workers process them like new traffic.

The request schema forbids unknown fields, so the link to the original travels in a Kafka header:
`replay-of` = the original request_id (UTF-8). A worker that sees the header stores the session
with replay_of=<header> and replay_mode="kafka"; the request body stays a valid request that
producers in any language could have sent.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..audit.db import read_only_engine
from ..audit.filters import TraceFilters
from ..audit.queries import TraceQueries
from ..config import Settings

REPLAY_OF_HEADER = "replay-of"
REPLAY_MODE = "kafka"


def new_request(request: dict[str, Any], new_id: str) -> dict[str, Any]:
    return {**request, "request_id": new_id}


async def republish_from_store(
    settings: Settings,
    filters: TraceFilters,
    *,
    suffix: str,
    limit: int | None = None,
    database_url: str | None = None,
) -> list[tuple[str, str]]:
    """Publish the selected sessions' requests as `<original><suffix>`; returns (new, original)
    pairs in the order sent. Idempotent per suffix on the worker side (request_id is the key
    the store deduplicates on). Replays are skipped unless the filters ask for them."""
    from aiokafka import AIOKafkaProducer

    if not suffix:
        raise ValueError("suffix must not be empty: the new request_ids must differ from the originals")
    if filters.replays == "include" and not filters.request_ids and filters.replay_of is None:
        filters = filters.model_copy(update={"replays": "exclude"})
    engine = read_only_engine(database_url or settings.database_url)
    queries = TraceQueries(engine)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    sent: list[tuple[str, str]] = []
    try:
        await producer.start()
        ids: list[str] = [s["request_id"] async for s in queries.iterate(filters, order="asc", limit=limit)]
        for start in range(0, len(ids), 200):
            futures = []
            for stored in await queries.load(ids[start : start + 200]):
                new_id = f"{stored.request_id}{suffix}"
                if len(new_id) > 256:
                    raise ValueError(f"{new_id[:40]}...: request_id would exceed 256 characters")
                body = orjson.dumps(new_request(stored.row["request"], new_id))
                futures.append(
                    await producer.send(
                        settings.request_topic,
                        value=body,
                        key=new_id.encode(),
                        headers=[(REPLAY_OF_HEADER, stored.request_id.encode())],
                    )
                )
                sent.append((new_id, stored.request_id))
            for future in futures:
                await future
    finally:
        await producer.stop()
        await engine.dispose()
    return sent
