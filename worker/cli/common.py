"""What every verb shares: the exit-2 helpers, the settings loader and the session-selection
options, defined once. Exit codes: 0 success, 1 some inputs failed, 2 usage or configuration
error (one line naming the fix)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ..audit.filters import MAX_TOP_K, FilterError, TraceFilters, parse_filters
from ..config import Settings
from ..errors import ConfigError

T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except Exception as exc:  # pydantic's ValidationError names the variable
        raise fail(f"bad configuration: {exc}".splitlines()[0] + f" ({_first_error(exc)})") from None


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        err = errors()[0]
        return f"LLM4RERANK_{str(err['loc'][0]).upper()}: {err['msg']}"
    return str(exc)


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except ConfigError as exc:
        raise fail(str(exc)) from None


# options shared by every verb that selects sessions ---------------------------------------------
Since = Annotated[str | None, typer.Option(help="received at or after (ISO 8601; naive = UTC)")]
Until = Annotated[str | None, typer.Option(help="received before (ISO 8601)")]
User = Annotated[str | None, typer.Option(help="user_id")]
Status = Annotated[str | None, typer.Option(help="ok, degraded, failed, running or pending")]
Node = Annotated[str | None, typer.Option(help="the walk visited this node")]
Goal = Annotated[str | None, typer.Option(help="case-insensitive substring of the goal")]
Model = Annotated[str | None, typer.Option(help="model that served the session")]
PromptVersion = Annotated[str | None, typer.Option(help="prompt set version, e.g. default-0123456789ab")]
Item = Annotated[str | None, typer.Option(help="an item_id that ended in the top --top-k")]
TopK = Annotated[int | None, typer.Option(help=f"with --item (default 10, at most {MAX_TOP_K})")]
ReplayOf = Annotated[str | None, typer.Option(help="replays of this original request_id")]
Db = Annotated[str | None, typer.Option("--db", help="trace store URL (default LLM4RERANK_DATABASE_URL)")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON (lines) instead of text")]


class Replays(StrEnum):
    include = "include"
    exclude = "exclude"
    only = "only"


ReplaysOpt = Annotated[Replays, typer.Option(help="sessions that are replays: include, exclude or only")]


def filters_or_exit(**values: Any) -> TraceFilters:
    """The trace-list filters from the shared options; a bad value is a one-line exit 2."""
    try:
        return parse_filters(**values)
    except FilterError as exc:
        raise fail(str(exc)) from None


def db_url(url: str | None) -> str:
    return url or settings_or_exit().database_url


def with_db(url: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that reads the store; an unreachable store is a one-line exit 2."""
    from asyncpg import PostgresError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    from ..audit.db import safe_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():  # reading must not create an empty store
            coro.close()
            raise fail(f"no trace store at {parsed.database}; pass --db with an existing file")
    try:
        return run(coro)
    except FilterError as exc:
        raise fail(str(exc)) from None
    except (OSError, OperationalError, InterfaceError, DBAPIError, PostgresError) as exc:
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise fail(
            f"cannot read the trace store at {safe_url(url)} ({detail}); start it (make up), "
            "run `llm4rerank db upgrade`, or pass --db"
        ) from None
