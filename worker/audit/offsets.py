"""Reprocess the input topic from a point in time: move the workers' consumer group to the first
offset at or after a timestamp, per partition (what `kafka-consumer-groups.sh --reset-offsets
--to-datetime` does, for installs without Kafka's shell tools, such as the local Maven one).

    .venv/bin/python -m worker.audit.offsets --to-datetime 2025-01-31T00:00:00Z            # dry run
    .venv/bin/python -m worker.audit.offsets --to-datetime 2025-01-31T00:00:00Z --execute  # workers stopped

Kafka only accepts the commit while the group has no members, so stop the workers first.
Re-delivered requests keep their request_ids: the workers treat them as duplicates and publish
the stored results again without new LLM calls. To compute new results for a time range, use
`llm4rerank submit --from-store --since ... --until ...` (new request_ids) or `llm4rerank replay`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

from ..config import Settings


@dataclass
class Move:
    partition: int
    committed: int | None
    target: int


async def reset_offsets(bootstrap: str, group: str, topic: str, to: datetime, *, execute: bool) -> list[Move]:
    """Per partition: the group's committed offset and the first offset at or after `to` (the end
    of the partition when nothing is that recent). Commits only with `execute`."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    if to.tzinfo is None:
        to = to.replace(tzinfo=UTC)
    if topic not in await _topics(bootstrap):
        raise ValueError(f"topic {topic!r} does not exist at {bootstrap}")
    probe = AIOKafkaProducer(bootstrap_servers=bootstrap)  # the public way to read partition metadata
    await probe.start()
    try:
        partitions = await probe.partitions_for(topic)
    finally:
        await probe.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        found = await consumer.offsets_for_times({tp: int(to.timestamp() * 1000) for tp in tps})
        ends = await consumer.end_offsets(tps)
        moves = []
        for tp in tps:
            hit = found.get(tp)
            moves.append(
                Move(tp.partition, await consumer.committed(tp), hit.offset if hit is not None else ends[tp])
            )
        if execute:
            await consumer.commit({TopicPartition(topic, m.partition): m.target for m in moves})
        return moves
    finally:
        await consumer.stop()


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        return set(await consumer.topics())
    finally:
        await consumer.stop()


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m worker.audit.offsets", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--to-datetime", required=True, help="ISO 8601, e.g. 2025-01-31T00:00:00Z")
    parser.add_argument("--group", default=settings.consumer_group)
    parser.add_argument("--topic", default=settings.request_topic)
    parser.add_argument("--bootstrap", default=settings.kafka_bootstrap)
    parser.add_argument("--execute", action="store_true", help="commit (default: only show)")
    args = parser.parse_args(argv)
    from aiokafka.errors import CommitFailedError

    try:
        to = datetime.fromisoformat(args.to_datetime.replace("Z", "+00:00"))
        moves = asyncio.run(reset_offsets(args.bootstrap, args.group, args.topic, to, execute=args.execute))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CommitFailedError:
        print(
            f"error: Kafka refused the commit: group {args.group!r} has active members; stop the "
            "workers and retry",
            file=sys.stderr,
        )
        return 1
    except Exception as exc:
        print(
            f"error: {type(exc).__name__}: {exc}; stop the workers of group {args.group!r} and retry",
            file=sys.stderr,
        )
        return 1
    for m in moves:
        print(f"{args.topic}[{m.partition}] group {args.group}: {m.committed} -> {m.target}")
    print("committed" if args.execute else "dry run: add --execute (with the workers stopped) to commit")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
