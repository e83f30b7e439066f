"""The Kafka worker: inbox, bounded walk runner, outbox publisher, metrics."""
