"""`llm4rerank retention`: export whole old partitions of the trace store to Parquet, then DETACH
and DROP them, never a long DELETE.

A partition pair (sessions_pX and steps_pX, same bounds) is old when its upper bound is at or
before now minus `--older-than`; one that straddles the cutoff waits for the next run. For each
old pair, oldest first:
1. with `--export DIR`: each table's rows go to DIR/<partition>.parquet through a temporary file,
   fsynced and renamed into place, so a crash never leaves a partial file under the final name;
   the prompt parts the steps refer to ("sha256:..." in their calls) go beside them to
   DIR/prompt_parts_pX.parquet, so the export reads back in full without the store;
2. one transaction checks the partitions still hold exactly the rows exported, then detaches and
   drops steps_pX and sessions_pX together.
A crash between 1 and 2 leaves the partitions in place; the next run exports them again (the
same rows, replacing the files atomically) and drops them. A re-run after success finds nothing.
3. after the drops, prompt parts last used before the oldest session kept (and before the cutoff)
   are deleted in short batches (parts.prune_parts): a step is written on or after its session's
   day and marks its parts used that day, so no kept step loses a part.

Rows in the default partitions (times no range covered when they arrived) are first moved into
range partitions by `ensure_partitions`, so they age out like the others. Deduplication after
retention: see worker/store/dedup.py (a request_id whose session was dropped is new again).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import JSON, Connection, DateTime, Float, Integer, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import ConfigError
from .partitions import (
    _ENSURE_LOCK,
    Interval,
    Partition,
    ensure_partitions,
    is_partitioned,
    partitions,
)
from .parts import load_parts, prune_parts, refs_of
from .tables import sessions, steps

_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
BATCH_ROWS = 5000


def parse_age(value: str) -> timedelta:
    """'30d', '12h', '2w' (also s and m) as a timedelta."""
    match = _AGE.match(value)
    if not match:
        raise ValueError(f"--older-than: a number and a unit (s, m, h, d, w), e.g. 30d; got {value!r}")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@dataclass
class RetentionReport:
    cutoff: datetime
    dropped: list[str] = field(default_factory=list)  # sessions partitions, steps twins with them
    files: list[Path] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # partition name -> rows exported/dropped
    created: list[str] = field(default_factory=list)
    parts_deleted: int = 0


def _pyarrow() -> Any:
    """pyarrow, imported only when exporting (it comes with the `eval` extra)."""
    from ..extras import require_extra

    require_extra("eval", "retention --export", ("pyarrow",))
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa, pq


def arrow_schema(table: Table) -> Any:
    """A fixed schema from the table's columns (JSON as its text), the same for every batch."""
    pa, _ = _pyarrow()
    fields = []
    for column in table.columns:
        kind = column.type
        if isinstance(kind, DateTime):
            arrow = pa.timestamp("us", tz="UTC")
        elif isinstance(kind, Float):
            arrow = pa.float64()
        elif isinstance(kind, Integer):
            arrow = pa.int64()
        else:
            arrow = pa.string()
        fields.append(pa.field(column.name, arrow))
    return pa.schema(fields)


def _cell(column: Any, value: Any) -> Any:
    if value is not None and isinstance(column.type, JSON):
        return orjson.dumps(value).decode()
    return value


async def export_partition(
    conn: AsyncConnection,
    table: Table,
    key: str,
    part: Partition,
    name: str,
    folder: Path,
    refs: set[str] | None = None,
) -> tuple[Path, int]:
    """Write one partition's rows to folder/name.parquet atomically; returns (path, rows). With
    `refs`, the prompt parts its rows' calls refer to are added to it."""
    pa, pq = _pyarrow()
    final, temp = _prepare(folder, name)
    schema = arrow_schema(table)
    columns = list(table.columns)
    query = select(table).where(table.c[key] >= part.lower, table.c[key] < part.upper).order_by(table.c.id)
    rows = 0
    try:
        with pq.ParquetWriter(temp, schema) as writer:
            result = await conn.stream(query)
            async for batch in result.partitions(BATCH_ROWS):
                data = {c.name: [_cell(c, row[i]) for row in batch] for i, c in enumerate(columns)}
                if refs is not None:
                    for row in batch:
                        refs |= refs_of(row.calls or ())
                writer.write_table(pa.Table.from_pydict(data, schema=schema))
                rows += len(batch)
        _publish(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final, rows


async def export_parts(conn: AsyncConnection, hashes: set[str], name: str, folder: Path) -> Path:
    """The prompt parts with these hashes to folder/name.parquet (hash, body as JSON text)."""
    pa, pq = _pyarrow()
    final, temp = _prepare(folder, name)
    found = await load_parts(conn, hashes)
    missing = hashes - set(found)
    if missing:
        raise RuntimeError(f"{name}: {len(missing)} prompt part(s) referred to are not stored")
    schema = pa.schema([pa.field("hash", pa.string()), pa.field("body", pa.string())])
    keys = sorted(found)
    data = {"hash": keys, "body": [orjson.dumps(found[k]).decode() for k in keys]}
    try:
        pq.write_table(pa.Table.from_pydict(data, schema=schema), temp)
        _publish(temp, final)
    finally:
        temp.unlink(missing_ok=True)
    return final


def _prepare(folder: Path, name: str) -> tuple[Path, Path]:
    """(final, temporary) paths; removes temporary files a crash mid-write left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f".{name}.parquet.tmp*"):
        stale.unlink()
    return folder / f"{name}.parquet", folder / f".{name}.parquet.tmp{os.getpid()}"


def _publish(temp: Path, final: Path) -> None:
    """Durable, then under its final name: a reader never sees part of a file."""
    for path, flags in ((temp, os.O_RDONLY), (final.parent, os.O_RDONLY)):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if path == temp:
            os.replace(temp, final)


def old_partitions(conn: Connection, cutoff: datetime) -> list[Partition]:
    return [p for p in partitions(conn) if p.upper <= cutoff]


def _count(conn: Connection, name: str) -> int:
    return int(conn.execute(select(func.count()).select_from(text(name))).scalar_one())


def drop_pair(conn: Connection, part: Partition, expected: dict[str, int] | None) -> bool:
    """Detach and drop the pair in the caller's transaction; False when already gone. With
    `expected` (rows exported per table), refuse if the partitions hold anything else."""
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ENSURE_LOCK})
    if conn.execute(text("SELECT to_regclass(:n)"), {"n": part.name}).scalar() is None:
        return False
    names = {"sessions": part.name, "steps": part.steps_name}
    for table in ("steps", "sessions"):  # steps first: they reference their sessions
        conn.execute(text(f"LOCK TABLE {names[table]} IN ACCESS EXCLUSIVE MODE"))
    if expected is not None:
        for name in names.values():
            held = _count(conn, name)
            if held != expected[name]:
                raise RuntimeError(
                    f"{name} holds {held} rows, {expected[name]} were exported; kept (run retention again)"
                )
    for table in ("steps", "sessions"):
        conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {names[table]}"))
        conn.execute(text(f"DROP TABLE {names[table]}"))
    return True


async def retain(
    url: str,
    older_than: timedelta,
    export: Path | None = None,
    *,
    interval: Interval = "day",
    ahead: int = 7,
    dry_run: bool = False,
    now: datetime | None = None,
    engine: AsyncEngine | None = None,
    after_export: Any = None,
) -> RetentionReport:
    """Create partitions ahead, then export (optional) and drop every pair older than the cutoff.
    `after_export(partition)` runs between export and drop (tests simulate a crash there)."""
    if not url.startswith("postgresql"):
        raise ConfigError("retention works on the PostgreSQL store (SQLite stores are not partitioned)")
    now = now or datetime.now(UTC)
    report = RetentionReport(cutoff=now - older_than)
    own = engine is None
    engine = engine or create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if not await conn.run_sync(is_partitioned):
                raise ConfigError("the store is not partitioned: run `llm4rerank db upgrade` first")
            if not dry_run:
                report.created = await conn.run_sync(ensure_partitions, interval, ahead, now)
            old = await conn.run_sync(old_partitions, report.cutoff)
        for part in old:
            if dry_run:
                report.dropped.append(part.name)
                continue
            expected = None
            if export is not None:
                expected = {}
                refs: set[str] = set()
                async with engine.connect() as conn:
                    for table, key, name in _pair(part):
                        path, rows = await export_partition(
                            conn, table, key, part, name, export, refs if table is steps else None
                        )
                        report.files.append(path)
                        expected[name] = rows
                    report.files.append(await export_parts(conn, refs, "prompt_parts" + part.suffix, export))
            if after_export is not None:
                after_export(part)
            async with engine.begin() as conn:
                dropped = await conn.run_sync(drop_pair, part, expected)
            if dropped:
                report.dropped.append(part.name)
                if expected is not None:
                    report.rows.update(expected)
        if not dry_run:
            report.parts_deleted = await prune_unused_parts(engine, report.cutoff)
    finally:
        if own:
            await engine.dispose()
    return report


async def prune_unused_parts(engine: AsyncEngine, cutoff: datetime) -> int:
    """Delete the prompt parts no kept step can refer to: last used before the day of the oldest
    session kept (or of the cutoff, if earlier or when no session is left)."""
    async with engine.connect() as conn:
        oldest = (await conn.execute(select(func.min(sessions.c.received_at)))).scalar()
    keep_from = cutoff if oldest is None else min(cutoff, oldest)
    return await prune_parts(engine, keep_from.astimezone(UTC).date())


def _pair(part: Partition) -> Iterable[tuple[Table, str, str]]:
    yield sessions, "received_at", part.name
    yield steps, "session_received_at", part.steps_name
