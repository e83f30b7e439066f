"""`llm4rerank trace show|list`, `audit-api` and `export`: the auditors' command line (it only reads).

Exit codes as everywhere: 0 success, 1 a request_id not found, 2 usage or configuration error.
"""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..audit.filters import MAX_PAGE
from .common import (
    AsJson,
    Db,
    Goal,
    Item,
    Model,
    Node,
    PromptVersion,
    ReplayOf,
    Replays,
    ReplaysOpt,
    Since,
    Status,
    TopK,
    Until,
    User,
    db_url,
    fail,
    filters_or_exit,
    settings_or_exit,
    with_db,
)

trace_app = typer.Typer(no_args_is_help=True, help="Query stored navigation traces.")


class Order(StrEnum):
    desc = "desc"
    asc = "asc"


class Format(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


def _dump(obj: Any) -> bytes:
    from ..audit.api import dump_json

    return dump_json(obj)


# trace ------------------------------------------------------------------------------------------
@trace_app.command("show")
def trace_show(
    request_id: Annotated[str, typer.Argument(help="the session's request_id")],
    as_json: AsJson = False,
    calls: Annotated[bool, typer.Option("--calls", help="also print every prompt and raw answer")] = False,
    db: Db = None,
) -> None:
    """One session with every step.

    Prints the request summary, goal and path, then for every step the node, the list it produced
    (with how each item moved), the next node, repairs, retries, tokens and latency."""
    from ..audit.db import read_only_engine
    from ..audit.queries import TraceQueries
    from ..audit.trace import render_session

    url = db_url(db)

    async def main() -> dict[str, Any] | None:
        engine = read_only_engine(url)
        try:
            return await TraceQueries(engine).session(request_id, with_calls=as_json or calls)
        finally:
            await engine.dispose()

    data = with_db(url, main())
    if data is None:
        typer.echo(f"error: no session {request_id!r} in the trace store", err=True)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.buffer.write(_dump(data) + b"\n")
    else:
        typer.echo(render_session(data, calls=calls))


@trace_app.command("list")
def trace_list(
    since: Since = None,
    until: Until = None,
    user: User = None,
    status: Status = None,
    node: Node = None,
    goal: Goal = None,
    model: Model = None,
    prompt_version: PromptVersion = None,
    item: Item = None,
    top_k: TopK = None,
    replay_of: ReplayOf = None,
    replays: ReplaysOpt = Replays.include,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE, help="page size")] = 50,
    cursor: Annotated[str | None, typer.Option(help="continue after the page that printed it")] = None,
    order: Annotated[Order, typer.Option(help="newest (desc) or oldest (asc) first")] = Order.desc,
    all_pages: Annotated[bool, typer.Option("--all", help="every match, page after page")] = False,
    as_json: AsJson = False,
    db: Db = None,
) -> None:
    """Sessions by time, user, status, node, goal text, model or top-k item.

    A table or JSON lines, newest first; --limit and --cursor page through large stores, --all
    prints every match."""
    from ..audit.db import read_only_engine
    from ..audit.queries import TraceQueries
    from ..audit.trace import render_table

    filters = filters_or_exit(
        since=since,
        until=until,
        user=user,
        status=status,
        node=node,
        goal=goal,
        model=model,
        prompt_version=prompt_version,
        item=item,
        top_k=top_k,
        replay_of=replay_of,
        replays=replays.value,
    )
    url = db_url(db)

    async def main() -> None:
        engine = read_only_engine(url)
        queries = TraceQueries(engine)
        try:
            page_cursor = cursor
            while True:
                page = await queries.list(filters, limit=limit, cursor=page_cursor, order=order.value)
                if as_json:
                    for row in page.items:
                        sys.stdout.buffer.write(_dump(row) + b"\n")
                    sys.stdout.flush()
                else:
                    typer.echo(render_table(page.items))
                if not all_pages or page.next_cursor is None:
                    if page.next_cursor:
                        typer.echo(f"more: --cursor {page.next_cursor}", err=True)
                    return
                page_cursor = page.next_cursor
        finally:
            await engine.dispose()

    with_db(url, main())


# audit-api --------------------------------------------------------------------------------------
def audit_api_command(
    host: Annotated[str | None, typer.Option(help="default LLM4RERANK_AUDIT_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default LLM4RERANK_AUDIT_PORT")] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="read-only URL (default "
            "LLM4RERANK_READER_DATABASE_URL, else the database URL with "
            "the user llm4rerank_reader)",
        ),
    ] = None,
) -> None:
    """Read-only HTTP API and trace viewer for auditors.

    Bearer tokens from LLM4RERANK_AUDIT_TOKENS; the viewer is at /, the OpenAPI document at
    /openapi.json."""
    import uvicorn

    from ..audit.api import check_tokens, create_app
    from ..audit.db import read_only_engine, reader_url, safe_url
    from ..errors import ConfigError

    settings = settings_or_exit()
    try:
        check_tokens(settings.audit_tokens)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    url = db or reader_url(settings)

    async def ping() -> None:
        from sqlalchemy import select

        from ..store.tables import sessions

        engine = read_only_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(select(sessions.c.id).limit(1))
        finally:
            await engine.dispose()

    with_db(url, ping())
    app = create_app(read_only_engine(url), settings.audit_tokens)
    bind_host, bind_port = host or settings.audit_host, port or settings.audit_port
    typer.echo(
        f"audit-api: viewer http://{bind_host}:{bind_port}/  API /api/sessions  OpenAPI "
        f"/openapi.json; reading {safe_url(url)} read-only",
        err=True,
    )
    uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning", proxy_headers=False)


# export -----------------------------------------------------------------------------------------
def export_command(
    since: Since = None,
    until: Until = None,
    user: User = None,
    status: Status = None,
    node: Node = None,
    goal: Goal = None,
    model: Model = None,
    prompt_version: PromptVersion = None,
    item: Item = None,
    top_k: TopK = None,
    replay_of: ReplayOf = None,
    replays: ReplaysOpt = Replays.include,
    out: Annotated[Path | None, typer.Option(help="output file (JSONL default: stdout)")] = None,
    fmt: Annotated[
        Format | None,
        typer.Option("--format", help="jsonl or parquet (default: from --out's suffix, else jsonl)"),
    ] = None,
    prompts: Annotated[bool, typer.Option("--prompts", help="include the messages sent")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many sessions")] = None,
    db: Db = None,
) -> None:
    """Export sessions to JSONL or Parquet, one row per step, for pandas or a notebook."""
    from ..audit.db import read_only_engine
    from ..audit.export import export_jsonl, export_parquet
    from ..audit.queries import TraceQueries

    filters = filters_or_exit(
        since=since,
        until=until,
        user=user,
        status=status,
        node=node,
        goal=goal,
        model=model,
        prompt_version=prompt_version,
        item=item,
        top_k=top_k,
        replay_of=replay_of,
        replays=replays.value,
    )
    chosen = fmt or (Format.parquet if out and out.suffix in (".parquet", ".pq") else Format.jsonl)
    if chosen is Format.parquet and out is None:
        raise fail("--format parquet needs --out FILE")
    url = db_url(db)

    async def main() -> tuple[int, int]:
        engine = read_only_engine(url)
        queries = TraceQueries(engine)
        try:
            if chosen is Format.parquet:
                assert out is not None
                return await export_parquet(queries, filters, out, limit=limit, prompts=prompts)
            if out is None:
                return await export_jsonl(queries, filters, sys.stdout.buffer, limit=limit, prompts=prompts)
            out.parent.mkdir(parents=True, exist_ok=True)
            with out.open("wb") as sink:
                return await export_jsonl(queries, filters, sink, limit=limit, prompts=prompts)
        finally:
            await engine.dispose()

    sessions, rows = with_db(url, main())
    typer.echo(f"exported {sessions} sessions, {rows} step rows" + (f" to {out}" if out else ""), err=True)
