"""The verbs `llm4rerank retention` and `llm4rerank db partitions` (logic in
worker/store/retention.py and worker/store/partitions.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from .common import settings_or_exit

Db = Annotated[str | None, typer.Option("--db", help="database URL (default LLM4RERANK_DATABASE_URL)")]


def retention_command(
    older_than: Annotated[
        str, typer.Option(help="drop partitions wholly older than this, e.g. 30d, 12h, 2w")
    ],
    export: Annotated[
        Path | None,
        typer.Option(help="first write each partition to DIR/<partition>.parquet (sessions_p…, steps_p…)"),
    ] = None,
    db: Db = None,
    dry_run: Annotated[bool, typer.Option(help="only list the partitions that would be dropped")] = False,
) -> None:
    """Export old partitions of sessions and steps to Parquet, then detach and drop them whole."""
    from ..errors import ConfigError
    from ..store.retention import parse_age, retain

    settings = settings_or_exit()
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    url = db or settings.database_url
    try:
        report = asyncio.run(
            retain(
                url,
                age,
                export,
                interval=settings.partition_interval,
                ahead=settings.partitions_ahead,
                dry_run=dry_run,
            )
        )
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except (OSError, ConnectionError) as exc:
        typer.echo(
            f"error: cannot reach the database at {url} ({exc}); start it (make up) or fix "
            "LLM4RERANK_DATABASE_URL",
            err=True,
        )
        raise typer.Exit(2) from None
    for name in report.created:
        typer.echo(f"created {name} (and its steps twin)", err=True)
    for path in report.files:
        typer.echo(f"exported {path}", err=True)
    verb = "would drop" if dry_run else "dropped"
    for name in report.dropped:
        rows = report.rows.get(name)
        typer.echo(
            f"{verb} {name} and steps{name.removeprefix('sessions')}"
            + (f" ({rows} sessions exported)" if rows is not None else "")
        )
    typer.echo(
        f"{len(report.dropped)} partition pair(s) older than {report.cutoff.isoformat()} {verb}", err=True
    )
    if not dry_run:
        typer.echo(f"{report.parts_deleted} prompt part(s) no kept step refers to deleted", err=True)


def partitions_command(db: Db = None) -> None:
    """Create the partitions of sessions and steps ahead of time (LLM4RERANK_PARTITIONS_AHEAD)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from ..store.partitions import ensure_partitions

    settings = settings_or_exit()
    url = db or settings.database_url

    async def main() -> list[str]:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                return await conn.run_sync(
                    ensure_partitions, settings.partition_interval, settings.partitions_ahead
                )
        finally:
            await engine.dispose()

    created = asyncio.run(main())
    typer.echo(f"created {len(created)} partition pair(s)" + (f": {', '.join(created)}" if created else ""))
