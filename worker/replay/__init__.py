"""Replay and republish: they run stored requests again and write (new sessions, Kafka records),
so they live beside the read-only `audit/` package, whose queries they use."""
