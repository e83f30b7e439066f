"""Auditors and replay: trace queries, the audit API and viewer, replays of stored sessions."""
