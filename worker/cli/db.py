"""`llm4rerank db upgrade`: the trace store's schema."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import fail, settings_or_exit

db_app = typer.Typer(no_args_is_help=True, help="The trace store's schema.")


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[str | None, typer.Option(help="database URL (default LLM4RERANK_DATABASE_URL)")] = None,
    revision: str = "head",
) -> None:
    """Create or migrate the trace store's schema (idempotent)."""
    from ..store.migrate import upgrade

    target = url or settings_or_exit().database_url
    try:
        upgrade(target, revision)
    except (OSError, ConnectionError) as exc:
        raise fail(
            f"cannot reach the database at {target} ({exc}); start it (make up) or fix "
            "LLM4RERANK_DATABASE_URL"
        ) from None
    typer.echo(f"schema at {revision} in {target}")
