"""One session per request_id on a time-partitioned `sessions` table.

PostgreSQL cannot enforce a unique index on request_id across partitions (a unique key of a
partitioned table must hold the partition key, received_at, which differs between two arrivals of
one request). So the inbox serializes by request_id instead: in the receiving transaction it
takes a transaction-scoped advisory lock on each request_id's 64-bit hash (sorted, so two batches
never deadlock), looks the ids up across all partitions (index ix_sessions_request_id) and inserts
only those not stored. A second worker receiving the same request_id waits on the lock until the
first commits, then finds its row: one session, as ON CONFLICT DO NOTHING gave before. Every
writer of `sessions` goes through `insert_sessions_once`; a hash collision only makes two
unrelated request_ids wait for each other.

Why not a narrow non-partitioned key table: it would keep growing (or need the long DELETE
retention exists to avoid) and adds a write per request; the lock costs one statement.

What this guarantees: deduplication holds while the first session is stored, i.e. within the
retention window. Once retention dropped its partition, a request_id arriving again is a new
session (walked and published again). Keep `--older-than` above the request topic's retention and
any replay horizon, so no redelivery can outlive its session.

SQLite stores (offline runs, tests) keep the unique index and ON CONFLICT DO NOTHING.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import BigInteger, Insert, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

from .tables import sessions

_keys = (
    func.unnest(bindparam("keys", type_=ARRAY(BigInteger)))
    .table_valued("key", with_ordinality="n")
    .render_derived()
)
LOCK_REQUEST_IDS = select(func.pg_advisory_xact_lock(_keys.c.key)).select_from(_keys).order_by(_keys.c.n)


def lock_key(request_id: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock (the same in every process)."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8, person=b"llm4rr-id").digest()
    return int.from_bytes(digest, "big", signed=True)


def first_of_each(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each request_id's first row: a batch's later duplicates are never inserted."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["request_id"], row)
    return first


def lock_keys(request_ids: Iterable[str]) -> list[int]:
    """The advisory locks for these request_ids, sorted so two batches never deadlock."""
    return sorted({lock_key(rid) for rid in request_ids})


async def insert_sessions_once(conn: AsyncConnection, statement: Insert, rows: list[dict[str, Any]]) -> None:
    """Insert the rows whose request_id is not stored yet (the first of a batch's duplicates),
    in the caller's transaction. `statement` is the dialect's insert of `sessions`."""
    if conn.dialect.name != "postgresql":
        await conn.execute(statement, rows)  # SQLite: unique index + ON CONFLICT DO NOTHING
        return
    first = first_of_each(rows)
    await conn.execute(LOCK_REQUEST_IDS, {"keys": lock_keys(first)})
    stored = set(
        (
            await conn.execute(select(sessions.c.request_id).where(sessions.c.request_id.in_(list(first))))
        ).scalars()
    )
    new = [row for rid, row in first.items() if rid not in stored]
    if new:
        await conn.execute(statement, new)
