"""`llm4rerank replay` and `submit --from-store`: the verbs that run stored requests again.

Exit codes as everywhere: 0 success, 1 some sessions failed (a recorded replay that differs, a
live replay that could not run, a request_id not found), 2 usage or configuration error.
"""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import Settings
from .common import (
    Db,
    Goal,
    Item,
    Model,
    Node,
    PromptVersion,
    Since,
    Status,
    TopK,
    Until,
    User,
    fail,
    filters_or_exit,
    run,
    settings_or_exit,
    with_db,
)


class Mode(StrEnum):
    recorded = "recorded"
    live = "live"


class Structured(StrEnum):
    json_schema = "json_schema"
    tgi = "tgi"
    json_object = "json_object"
    none = "none"


def replay_command(
    request_ids: Annotated[
        list[str] | None,
        typer.Argument(help="request_ids to replay (or select with the filters)", show_default=False),
    ] = None,
    mode: Annotated[
        Mode, typer.Option(help="recorded: stored answers, no LLM; live: call a model")
    ] = Mode.recorded,
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
    include_replays: Annotated[bool, typer.Option(help="also replay sessions that are replays")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many sessions")] = None,
    db: Db = None,
    report: Annotated[Path, typer.Option(help="JSON report file")] = Path("replay-report.json"),
    labels: Annotated[
        Path | None, typer.Option(help='JSONL {"request_id": ..., "positive": item} for HR and NDCG')
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(
            min=1, max=50, help="step cap (live: replaces the request's; recorded: when not inferable)"
        ),
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="live: OpenAI-compatible endpoint")] = None,
    llm_model: Annotated[str | None, typer.Option("--llm-model", help="live: model name")] = None,
    prompts: Annotated[str | None, typer.Option(help="live: prompt set (default, paper)")] = None,
    structured: Annotated[
        Structured | None, typer.Option(help="live: json_schema, tgi, json_object or none")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="live: sessions in flight")] = 8,
    tag: Annotated[
        str | None,
        typer.Option(help="live: suffix of the new request_ids (<original>~<tag>; default live-<UTC time>)"),
    ] = None,
    store: Annotated[str | None, typer.Option(help="live: where new sessions go (default --db)")] = None,
    quiet: Annotated[bool, typer.Option(help="only the report table")] = False,
) -> None:
    """Replay stored sessions (recorded or live) and report the differences.

    recorded: feed the stored LLM answers back to the current code, no LLM call, nothing written;
    exit 1 if any session's steps, path or final ranking differ. live: re-run the requests against
    another endpoint, model, prompt set or step cap and store the new sessions as <id>~<tag>, linked
    to the originals. Both print a report table and write it as JSON (--report)."""
    from ..replay.replayer import Comparison
    from ..replay.report import load_labels, render_diff, render_report, write_report
    from ..replay.run import LiveTarget, ReplayUsageError, exit_code, live_settings, replay_report, run_replay

    settings = settings_or_exit()
    filters = filters_or_exit(
        request_ids=tuple(request_ids or ()),
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
        replays="include" if include_replays or request_ids else "exclude",
    )
    url = db or settings.database_url
    known_labels: dict[str, list[str]] = {}
    if labels is not None:
        try:
            known_labels = load_labels(labels)
        except (OSError, ValueError) as exc:
            raise fail(f"--labels: {exc}") from None
    target = LiveTarget(
        base_url, llm_model, prompts, structured.value if structured else None, tag, store, concurrency
    )
    live = None
    if mode is Mode.live:
        try:
            live = live_settings(settings, target, max_steps)
        except ReplayUsageError as exc:
            raise fail(str(exc)) from None
    elif target.given():
        raise fail("--base-url, --llm-model, --prompts, --structured, --tag and --store are for --mode live")

    def show(c: Comparison) -> None:
        if quiet:
            return
        if mode is Mode.recorded and not c.reproduced:
            typer.echo(render_diff(c))
        elif mode is Mode.live and c.error:
            typer.echo(f"{c.original.request_id}: error: {c.error}")

    done = with_db(
        url,
        run_replay(
            settings,
            mode.value,
            filters,
            url,
            requested=tuple(request_ids or ()),
            limit=limit,
            max_steps=max_steps,
            live=live,
            target=target,
            on_result=show,
        ),
    )
    for rid in done.missing:
        typer.echo(f"error: no session {rid!r} in the trace store", err=True)
    if done.skipped:
        typer.echo(
            f"skipped {len(done.skipped)} unfinished session(s): {', '.join(done.skipped[:10])}", err=True
        )
    if not done.comparisons:
        typer.echo("no finished sessions match; nothing replayed", err=True)
        raise typer.Exit(1 if done.missing else 0)
    data = replay_report(
        settings,
        mode.value,
        done,
        filters,
        url,
        labels=known_labels,
        max_steps=max_steps,
        live=live,
        target=target,
    )
    typer.echo(render_report(data))
    try:
        write_report(data, report)
    except OSError as exc:
        raise fail(f"cannot write the report to {report}: {exc}") from None
    typer.echo(f"report: {report}", err=True)
    raise typer.Exit(exit_code(mode.value, done, data))


def republish(settings: Settings, limit: int | None, suffix: str | None, **filters: Any) -> None:
    """`submit --from-store`: publish the selected stored requests again under new request_ids."""
    import orjson

    from ..replay.republish import republish_from_store

    selection = filters_or_exit(**filters)
    tag = suffix or time.strftime("~kafka-%Y%m%dT%H%M%S", time.gmtime())
    try:
        pairs = run(republish_from_store(settings, selection, suffix=tag, limit=limit))
    except (OSError, ConnectionError) as exc:
        raise fail(f"cannot reach Kafka or the store ({exc}); start them (make up)") from None
    for new, original in pairs:
        sys.stdout.buffer.write(orjson.dumps({"request_id": new, "replay_of": original}) + b"\n")
    typer.echo(f"re-published {len(pairs)} stored request(s) to {settings.request_topic}", err=True)
