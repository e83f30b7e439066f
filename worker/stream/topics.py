"""Create the service's topics up front, so producers and consumers never race auto-creation."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from ..config import Settings

PARTITIONS = 4


async def ensure_topics(settings: Settings, *extra: str, partitions: int = PARTITIONS) -> dict[str, int]:
    """Create missing topics; returns each topic's partition count."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id="llm4rerank-admin", request_timeout_ms=15000
    )
    await admin.start()
    try:
        wanted = {settings.request_topic, settings.result_topic, settings.dlq_topic, *extra}
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, partitions, 1) for name in sorted(wanted - existing)]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
        described = await admin.describe_topics(sorted(wanted))
        return {t["topic"]: len(t["partitions"]) for t in described}
    finally:
        await admin.close()
