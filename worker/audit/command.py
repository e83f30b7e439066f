"""`llm4rerank trace show|list`, `replay`, `audit-api` and `export`: the auditors' command line.

Exit codes as everywhere: 0 success, 1 some sessions failed (a recorded replay that differs, a
live replay that could not run, a request_id not found), 2 usage or configuration error.
"""

from __future__ import annotations

import sys
from collections.abc import Coroutine
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .filters import MAX_PAGE, MAX_TOP_K, FilterError, TraceFilters, parse_filters

T = TypeVar("T")
trace_app = typer.Typer(no_args_is_help=True, help="Query stored navigation traces.")

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


class Order(StrEnum):
    desc = "desc"
    asc = "asc"


class Mode(StrEnum):
    recorded = "recorded"
    live = "live"


class Structured(StrEnum):
    json_schema = "json_schema"
    tgi = "tgi"
    json_object = "json_object"
    none = "none"


class Format(StrEnum):
    jsonl = "jsonl"
    parquet = "parquet"


def fail(message: str) -> typer.Exit:
    """worker.cli's helpers, imported when used: cli.py imports this module while it loads."""
    from ..cli import fail as cli_fail

    return cli_fail(message)


def settings_or_exit(**overrides: Any) -> Any:
    from ..cli import settings_or_exit as cli_settings

    return cli_settings(**overrides)


def run(coro: Coroutine[Any, Any, T]) -> T:
    from ..cli import run as cli_run

    return cli_run(coro)


def _filters(**values: Any) -> TraceFilters:
    try:
        return parse_filters(**values)
    except FilterError as exc:
        raise fail(str(exc)) from None


def _db(url: str | None) -> str:
    return url or settings_or_exit().database_url


def _with_db(url: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that reads the store; an unreachable store is a one-line exit 2."""
    from asyncpg import PostgresError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    from .db import safe_url

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
        raise fail(f"cannot read the trace store at {safe_url(url)} ({detail}); start it (make up), "
                   "run `llm4rerank db upgrade`, or pass --db") from None


def _dump(obj: Any) -> bytes:
    from .api import dump_json

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
    from .db import read_only_engine
    from .queries import TraceQueries
    from .trace import render_session

    url = _db(db)

    async def main() -> dict[str, Any] | None:
        engine = read_only_engine(url)
        try:
            return await TraceQueries(engine).session(request_id, with_calls=as_json or calls)
        finally:
            await engine.dispose()

    data = _with_db(url, main())
    if data is None:
        typer.echo(f"error: no session {request_id!r} in the trace store", err=True)
        raise typer.Exit(1)
    if as_json:
        sys.stdout.buffer.write(_dump(data) + b"\n")
    else:
        typer.echo(render_session(data, calls=calls))


@trace_app.command("list")
def trace_list(
    since: Since = None, until: Until = None, user: User = None, status: Status = None,
    node: Node = None, goal: Goal = None, model: Model = None, prompt_version: PromptVersion = None,
    item: Item = None, top_k: TopK = None, replay_of: ReplayOf = None, replays: ReplaysOpt = Replays.include,
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
    from .db import read_only_engine
    from .queries import TraceQueries
    from .trace import render_table

    filters = _filters(since=since, until=until, user=user, status=status, node=node, goal=goal,
                       model=model, prompt_version=prompt_version, item=item, top_k=top_k,
                       replay_of=replay_of, replays=replays.value)
    url = _db(db)

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

    _with_db(url, main())


# replay -----------------------------------------------------------------------------------------
def replay_command(
    request_ids: Annotated[list[str] | None, typer.Argument(
        help="request_ids to replay (or select with the filters)", show_default=False)] = None,
    mode: Annotated[Mode, typer.Option(help="recorded: stored answers, no LLM; live: call a model")]
    = Mode.recorded,
    since: Since = None, until: Until = None, user: User = None, status: Status = None,
    node: Node = None, goal: Goal = None, model: Model = None, prompt_version: PromptVersion = None,
    item: Item = None, top_k: TopK = None,
    include_replays: Annotated[bool, typer.Option(help="also replay sessions that are replays")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many sessions")] = None,
    db: Db = None,
    report: Annotated[Path, typer.Option(help="JSON report file")] = Path("replay-report.json"),
    labels: Annotated[Path | None, typer.Option(
        help='JSONL {"request_id": ..., "positive": item} for HR and NDCG')] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, max=50, help="step cap (live: replaces the "
                                                  "request's; recorded: when not inferable)")] = None,
    base_url: Annotated[str | None, typer.Option(help="live: OpenAI-compatible endpoint")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="live: model name")] = None,
    prompts: Annotated[str | None, typer.Option(help="live: prompt set (default, paper)")] = None,
    structured: Annotated[Structured | None, typer.Option(
        help="live: json_schema, tgi, json_object or none")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="live: sessions in flight")] = 8,
    tag: Annotated[str | None, typer.Option(help="live: suffix of the new request_ids "
                                            "(<original>~<tag>; default live-<UTC time>)")] = None,
    store: Annotated[str | None, typer.Option(help="live: where new sessions go (default --db)")] = None,
    quiet: Annotated[bool, typer.Option(help="only the report table")] = False,
) -> None:
    """Replay stored sessions (recorded or live) and report the differences.

    recorded: feed the stored LLM answers back to the current code, no LLM call, nothing written;
    exit 1 if any session's steps, path or final ranking differ. live: re-run the requests against
    another endpoint, model, prompt set or step cap and store the new sessions as <id>~<tag>, linked
    to the originals. Both print a report table and write it as JSON (--report)."""
    from .report import build_report, load_labels, render_report, write_report

    settings = settings_or_exit()
    filters = _filters(request_ids=tuple(request_ids or ()), since=since, until=until, user=user,
                       status=status, node=node, goal=goal, model=model, prompt_version=prompt_version,
                       item=item, top_k=top_k,
                       replays="include" if include_replays or request_ids else "exclude")
    url = db or settings.database_url
    known_labels: dict[str, list[str]] = {}
    if labels is not None:
        try:
            known_labels = load_labels(labels)
        except (OSError, ValueError) as exc:
            raise fail(f"--labels: {exc}") from None
    live_settings = settings
    if mode is Mode.live:
        from ..engine.prompts import PromptSet
        from ..errors import ConfigError

        update = {k: v for k, v in {
            "llm_base_url": base_url, "llm_model": llm_model, "prompts": prompts,
            "llm_structured": structured.value if structured else None, "max_steps": max_steps,
        }.items() if v is not None}
        live_settings = settings.model_copy(update=update)
        try:
            PromptSet.load(live_settings.prompts_dir, live_settings.prompts)
        except ConfigError as exc:
            raise fail(str(exc)) from None
        if not live_settings.llm_base_url:
            raise fail("live replay needs an endpoint: pass --base-url or set LLM4RERANK_LLM_BASE_URL")
    elif any(v is not None for v in (base_url, llm_model, prompts, structured, tag, store)):
        raise fail("--base-url, --llm-model, --prompts, --structured, --tag and --store are for --mode live")

    from .db import read_only_engine
    from .queries import StoredSession, TraceQueries
    from .replay import Comparison, default_tag, replay_live, replay_recorded, select_sessions
    from .report import render_diff

    skipped: list[str] = []
    selected: list[str] = []

    def show(c: Comparison) -> None:
        if quiet:
            return
        if mode is Mode.recorded and not c.reproduced:
            typer.echo(render_diff(c))
        elif mode is Mode.live and c.error:
            typer.echo(f"{c.original.request_id}: error: {c.error}")

    async def finished_only() -> Any:
        engine = read_only_engine(url)
        try:
            stored: StoredSession
            async for stored in select_sessions(TraceQueries(engine), filters, limit):
                if stored.row["status"] in ("ok", "degraded", "failed"):
                    selected.append(stored.request_id)
                    yield stored
                else:
                    skipped.append(stored.request_id)
        finally:
            await engine.dispose()

    async def main() -> list[Comparison]:
        if mode is Mode.recorded:
            return await replay_recorded(settings, finished_only(), max_steps=max_steps, on_result=show)
        return await replay_live(live_settings, finished_only(), store_url=store or url,
                                 tag=tag or default_tag(), concurrency=concurrency, max_steps=max_steps,
                                 on_result=show)

    comparisons = _with_db(url, main())
    missing = sorted(set(request_ids or ()) - set(selected) - set(skipped))
    for rid in missing:
        typer.echo(f"error: no session {rid!r} in the trace store", err=True)
    if skipped:
        typer.echo(f"skipped {len(skipped)} unfinished session(s): {', '.join(skipped[:10])}", err=True)
    if not comparisons:
        typer.echo("no finished sessions match; nothing replayed", err=True)
        raise typer.Exit(1 if missing else 0)
    config: dict[str, Any] = {"db": _safe(url),
                              "filters": filters.model_dump(mode="json", exclude_defaults=True)}
    if mode is Mode.live:
        config.update({"llm_base_url": live_settings.llm_base_url, "llm_model": live_settings.llm_model,
                       "prompts": live_settings.prompts, "llm_structured": live_settings.llm_structured,
                       "max_steps": max_steps, "concurrency": concurrency, "store": _safe(store or url)})
    data = build_report(mode.value, comparisons, labels=known_labels, default_aspects=settings.aspects,
                        config=config)
    typer.echo(render_report(data))
    try:
        write_report(data, report)
    except OSError as exc:
        raise fail(f"cannot write the report to {report}: {exc}") from None
    typer.echo(f"report: {report}", err=True)
    if mode is Mode.recorded:
        bad = sum(1 for c in comparisons if not c.reproduced)
        raise typer.Exit(1 if bad or missing else 0)
    raise typer.Exit(1 if data["errors"] or missing else 0)


def _safe(url: str) -> str:
    from .db import safe_url

    return safe_url(url)


# audit-api --------------------------------------------------------------------------------------
def audit_api_command(
    host: Annotated[str | None, typer.Option(help="default LLM4RERANK_AUDIT_HOST")] = None,
    port: Annotated[int | None, typer.Option(help="default LLM4RERANK_AUDIT_PORT")] = None,
    db: Annotated[str | None, typer.Option("--db", help="read-only URL (default "
                                           "LLM4RERANK_READER_DATABASE_URL, else the database URL with "
                                           "the user llm4rerank_reader)")] = None,
) -> None:
    """Read-only HTTP API and trace viewer for auditors.

    Bearer tokens from LLM4RERANK_AUDIT_TOKENS; the viewer is at /, the OpenAPI document at
    /openapi.json."""
    import uvicorn

    from ..errors import ConfigError
    from .api import check_tokens, create_app
    from .db import read_only_engine, reader_url, safe_url

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

    _with_db(url, ping())
    app = create_app(read_only_engine(url), settings.audit_tokens)
    bind_host, bind_port = host or settings.audit_host, port or settings.audit_port
    typer.echo(f"audit-api: viewer http://{bind_host}:{bind_port}/  API /api/sessions  OpenAPI "
               f"/openapi.json; reading {safe_url(url)} read-only", err=True)
    uvicorn.run(app, host=bind_host, port=bind_port, log_level="warning", proxy_headers=False)


# export -----------------------------------------------------------------------------------------
def export_command(
    since: Since = None, until: Until = None, user: User = None, status: Status = None,
    node: Node = None, goal: Goal = None, model: Model = None, prompt_version: PromptVersion = None,
    item: Item = None, top_k: TopK = None, replay_of: ReplayOf = None, replays: ReplaysOpt = Replays.include,
    out: Annotated[Path | None, typer.Option(help="output file (JSONL default: stdout)")] = None,
    fmt: Annotated[Format | None, typer.Option("--format", help="jsonl or parquet (default: from "
                                               "--out's suffix, else jsonl)")] = None,
    prompts: Annotated[bool, typer.Option("--prompts", help="include the messages sent")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many sessions")] = None,
    db: Db = None,
) -> None:
    """Export sessions to JSONL or Parquet, one row per step, for pandas or a notebook."""
    from .db import read_only_engine
    from .export import export_jsonl, export_parquet
    from .queries import TraceQueries

    filters = _filters(since=since, until=until, user=user, status=status, node=node, goal=goal,
                       model=model, prompt_version=prompt_version, item=item, top_k=top_k,
                       replay_of=replay_of, replays=replays.value)
    chosen = fmt or (Format.parquet if out and out.suffix in (".parquet", ".pq") else Format.jsonl)
    if chosen is Format.parquet and out is None:
        raise fail("--format parquet needs --out FILE")
    url = _db(db)

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

    sessions, rows = _with_db(url, main())
    typer.echo(f"exported {sessions} sessions, {rows} step rows" + (f" to {out}" if out else ""), err=True)
