"""Time partitions of the trace store on PostgreSQL: `sessions` by `received_at`, `steps` by
`session_received_at` (their session's time), in pairs with the same bounds, so a session and its
steps always live, age and are dropped together.

Partitions are created ahead of time (by the migration, the worker at start and every hour, and
`llm4rerank db partitions` / `retention`). A DEFAULT partition on each table takes any row no
range covers, so an insert is never refused; the next `ensure_partitions` moves such rows into the
range partition it creates for them, where retention later finds them. SQLite stores stay
unpartitioned: every function here does nothing there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

Interval = Literal["day", "month"]
PAIRS = (("sessions", "received_at"), ("steps", "session_received_at"))
DEFAULT_SUFFIX = "_default"
_ENSURE_LOCK = 0x6C6C6D34_72657400  # one creator at a time across workers (an advisory lock key)
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
# Statements run on every partition of each table when it is created (range, default, or filled
# from the default): settings a partitioned parent cannot hold, such as storage parameters
# ("ALTER TABLE {partition} SET (toast_tuple_target = 256)"). {partition} is the partition's name.
# A migration changing them runs setup_existing() for the partitions already there.
PARTITION_SETUP: dict[str, tuple[str, ...]] = {"sessions": (), "steps": ()}


@dataclass(frozen=True)
class Partition:
    """One range partition of `sessions` ([lower, upper) on received_at) and its `steps` twin."""

    name: str  # the sessions partition; the steps one is the same with steps_ in front
    lower: datetime
    upper: datetime

    @property
    def suffix(self) -> str:
        return self.name.removeprefix("sessions")

    @property
    def steps_name(self) -> str:
        return "steps" + self.suffix


def floor(moment: datetime, interval: Interval) -> datetime:
    moment = moment.astimezone(UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if interval == "day" else day.replace(day=1)


def following(start: datetime, interval: Interval) -> datetime:
    if interval == "day":
        return start + timedelta(days=1)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def suffix_for(start: datetime, interval: Interval) -> str:
    return start.strftime("_p%Y%m%d" if interval == "day" else "_p%Y%m")


def is_partitioned(conn: Connection) -> bool:
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind::text FROM pg_class WHERE oid = to_regclass('sessions')"))
    return kind.scalar() == "p"


def partitions(conn: Connection) -> list[Partition]:
    """The range partitions of `sessions`, oldest first (bounds read from the catalog in UTC)."""
    if not is_partitioned(conn):
        return []
    conn.execute(text("SET LOCAL TIME ZONE 'UTC'"))
    rows = conn.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'sessions'::regclass"
        )
    )
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            lower, upper = (datetime.fromisoformat(v).astimezone(UTC) for v in match.groups())
            found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: p.lower)


def occupied(conn: Connection, table: str, column: str, interval: Interval) -> list[datetime]:
    """The starts of the intervals that hold rows of `table` (UTC)."""
    rows = conn.execute(
        text(f"SELECT DISTINCT date_trunc(:unit, {column} AT TIME ZONE 'UTC') FROM {table}"),
        {"unit": interval},
    )
    return [value.replace(tzinfo=UTC) for (value,) in rows if value is not None]


def ensure_partitions(
    conn: Connection,
    interval: Interval = "day",
    ahead: int = 7,
    now: datetime | None = None,
    extra: Iterable[datetime] = (),
) -> list[str]:
    """Create the partitions from now to `ahead` intervals after it, one for each interval the
    default partitions hold rows of (moved into it) and for each time in `extra` (the migration's
    existing rows). Ranges overlapping an existing partition are skipped, so changing the interval
    later is safe. Returns the names created. Runs in the caller's transaction; an advisory lock
    keeps concurrent callers apart."""
    if not is_partitioned(conn):
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ENSURE_LOCK})
    now = now or datetime.now(UTC)
    existing = partitions(conn)
    starts = {floor(moment, interval) for moment in extra}
    starts.update(occupied(conn, f"sessions{DEFAULT_SUFFIX}", "received_at", interval))
    lower = floor(now, interval)
    for _ in range(ahead + 1):
        starts.add(lower)
        lower = following(lower, interval)
    created = []
    for lower in sorted(starts):
        upper = following(lower, interval)
        if not any(p.lower < upper and lower < p.upper for p in existing):
            suffix = suffix_for(lower, interval)
            _create_pair(conn, suffix, lower, upper)
            existing.append(Partition("sessions" + suffix, lower, upper))
            created.append("sessions" + suffix)
    return created


def setup_partition(conn: Connection, table: str, partition: str) -> None:
    """Run PARTITION_SETUP for one new partition of `table`."""
    for statement in PARTITION_SETUP.get(table, ()):
        conn.execute(text(statement.format(partition=partition)))


def setup_existing(conn: Connection) -> list[str]:
    """Run PARTITION_SETUP on every partition (default included) of sessions and steps; returns
    their names."""
    if not is_partitioned(conn):
        return []
    done = []
    for table, _ in PAIRS:
        for name in partition_names(conn, table):
            setup_partition(conn, table, name)
            done.append(name)
    return done


def partition_names(conn: Connection, table: str) -> list[str]:
    """Every partition of `table` (default included); none where it is not partitioned."""
    if not is_partitioned(conn):
        return []
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:t AS regclass) ORDER BY c.relname"
        ),
        {"t": table},
    ).scalars()
    return list(names)


def create_default(conn: Connection, table: str) -> None:
    """The DEFAULT partition of `table` (created by migration 0008)."""
    conn.execute(text(f"CREATE TABLE {table}{DEFAULT_SUFFIX} PARTITION OF {table} DEFAULT"))
    setup_partition(conn, table, table + DEFAULT_SUFFIX)


def _create_pair(conn: Connection, suffix: str, lower: datetime, upper: datetime) -> None:
    bounds = f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    moving = {}
    for table, key in PAIRS:
        moving[table] = conn.execute(
            text(f"SELECT count(*) FROM {table}{DEFAULT_SUFFIX} WHERE {key} >= :lo AND {key} < :hi"),
            {"lo": lower, "hi": upper},
        ).scalar_one()
    if not any(moving.values()):
        for table, _ in PAIRS:  # sessions first: steps' foreign key needs its twin attached
            conn.execute(text(f"CREATE TABLE {table}{suffix} PARTITION OF {table} {bounds}"))
            setup_partition(conn, table, table + suffix)
        return
    # rows waited in the default partitions: move them into a standalone twin, then attach it
    # (a partition made by PARTITION OF inherits the parent's column compression; LIKE copies it)
    for table, key in reversed(PAIRS):
        where = f"{key} >= :lo AND {key} < :hi"
        like = f"LIKE {table} INCLUDING DEFAULTS INCLUDING COMPRESSION"
        conn.execute(text(f"CREATE TABLE {table}{suffix} ({like})"))
        setup_partition(conn, table, table + suffix)
        conn.execute(
            text(f"INSERT INTO {table}{suffix} SELECT * FROM {table}{DEFAULT_SUFFIX} WHERE {where}"),
            {"lo": lower, "hi": upper},
        )
        conn.execute(text(f"DELETE FROM {table}{DEFAULT_SUFFIX} WHERE {where}"), {"lo": lower, "hi": upper})
    for table, _ in PAIRS:
        conn.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {table}{suffix} {bounds}"))


async def ensure_ahead(engine: AsyncEngine, interval: Interval, ahead: int) -> list[str]:
    """`ensure_partitions` in a transaction of its own (the worker's hourly call)."""
    async with engine.begin() as conn:
        return await conn.run_sync(ensure_partitions, interval, ahead)
