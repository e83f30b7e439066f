"""`llm4rerank rerank`, `sim-llm`, `worker`, `submit` and `schemas`: the service's own verbs."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from .common import (
    Goal,
    Item,
    Model,
    Node,
    PromptVersion,
    ReplayOf,
    Since,
    Status,
    TopK,
    Until,
    User,
    fail,
    run,
    settings_or_exit,
)


class PolicyName(StrEnum):
    llm = "llm"
    heuristic = "heuristic"


def rerank(
    file: Annotated[str, typer.Argument(help="JSONL requests, or - for standard input")] = "-",
    out: Annotated[Path | None, typer.Option(help="JSONL results (default: stdout)")] = None,
    trace: Annotated[Path | None, typer.Option(help="write every step as JSONL")] = None,
    policy: Annotated[PolicyName, typer.Option(help="llm or heuristic (no LLM)")] = PolicyName.llm,
    concurrency: Annotated[int | None, typer.Option(min=1)] = None,
    store: Annotated[
        str | None,
        typer.Option(help="keep sessions and steps in this database, e.g. sqlite+aiosqlite:///traces.db"),
    ] = None,
) -> None:
    """Offline: rerank JSONL requests without Kafka; invalid lines give error records."""
    from ..offline import rerank_lines
    from ..policies.chat import OpenAIChat
    from ..service import Reranker

    settings = settings_or_exit()

    async def main() -> int:
        chat = None
        try:
            if policy is PolicyName.llm:
                chat = OpenAIChat(settings)
                await chat.check()
            reranker = Reranker(settings, chat, policy=policy.value)
        except BaseException:
            if chat is not None:
                await chat.close()  # the aiohttp session, else "Unclosed client session" at exit
            raise
        trace_store = None
        if store:
            from ..store.migrate import upgrade_async
            from ..store.store import Store

            await upgrade_async(store)
            trace_store = Store(store)
        source = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: ASYNC230
        sink = open(out, "wb") if out else sys.stdout.buffer  # noqa: ASYNC230
        trace_sink = open(trace, "wb") if trace else None  # noqa: ASYNC230
        try:
            stats = await rerank_lines(
                reranker, source, sink, trace_sink, concurrency or min(settings.concurrency, 64), trace_store
            )
        finally:
            for handle in (source, sink, trace_sink):
                if handle not in (None, sys.stdin.buffer, sys.stdout.buffer):
                    handle.close()
            if chat is not None:
                await chat.close()
            if trace_store is not None:
                await trace_store.close()
        typer.echo(
            f"ok {stats.ok}, degraded {stats.degraded}, failed {stats.failed}, invalid {stats.invalid}",
            err=True,
        )
        return stats.exit_code

    if file != "-" and not Path(file).is_file():
        raise fail(f"no such file: {file}")
    raise typer.Exit(run(main()))


def sim_llm(
    host: str = "127.0.0.1",
    port: int = 8000,
    seed: int = 0,
    latency_ms: Annotated[float, typer.Option(min=0)] = 0.0,
    latency_jitter_ms: Annotated[float, typer.Option(min=0)] = 0.0,
    max_concurrent: Annotated[int, typer.Option(min=1)] = 64,
    error_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    rate_limit_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    malformed_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    timeout_rate: Annotated[float, typer.Option(min=0, max=1)] = 0.0,
    timeout_s: Annotated[float, typer.Option(min=0.001)] = 120.0,
    call_log: Annotated[Path | None, typer.Option(help="append one JSON line per call received")] = None,
    backward_rate: Annotated[
        float,
        typer.Option(min=0, max=1, help="how often an aspect step names Backward when offered (seeded)"),
    ] = 0.0,
    dialect: Annotated[
        str,
        typer.Option(
            help="accept and refuse response_format shapes as this "
            "server does: vllm, tgi, llama-cpp-python, llama.cpp"
        ),
    ] = "vllm",
) -> None:
    """A SIMULATED OpenAI-compatible LLM (heuristic answers), for development and tests only."""
    import uvicorn

    from ..simllm import SIMULATED_MODEL
    from ..simllm.faults import Faults
    from ..simllm.server import SimState, create_app

    settings = settings_or_exit()
    faults = Faults(
        latency_ms=latency_ms,
        latency_jitter_ms=latency_jitter_ms,
        error_rate=error_rate,
        rate_limit_rate=rate_limit_rate,
        malformed_rate=malformed_rate,
        timeout_rate=timeout_rate,
        timeout_s=timeout_s,
        backward_rate=backward_rate,
    )
    from ..simllm.dialects import DIALECTS

    if dialect not in DIALECTS:
        raise fail(f"--dialect: one of {list(DIALECTS)}")
    state = SimState(settings.prompts_dir, faults, seed, max_concurrent, call_log=call_log, dialect=dialect)
    typer.echo(
        f"sim-llm: SIMULATED LLM (heuristic answers, not a model) serving model "
        f"{SIMULATED_MODEL!r} at http://{host}:{port}/v1 with seed {seed}; "
        "for development and tests only",
        err=True,
    )
    uvicorn.run(
        create_app(state), host=host, port=port, log_level="warning", timeout_keep_alive=30, backlog=4096
    )


def worker(loglevel: str = "info") -> None:
    """The Kafka worker: requests in, results and dead letters out, every step in PostgreSQL."""
    from ..stream.app import run_worker

    settings = settings_or_exit()
    if not settings.llm_base_url:
        raise fail("no LLM endpoint: set LLM4RERANK_LLM_BASE_URL (e.g. http://127.0.0.1:8000/v1)")
    try:
        run_worker(settings, loglevel)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def submit(
    file: Annotated[str | None, typer.Argument(help="JSONL requests, or - for standard input")] = None,
    wait: Annotated[bool, typer.Option(help="print results and dead letters as they arrive")] = False,
    timeout: Annotated[float, typer.Option(help="seconds to wait for answers")] = 120.0,
    from_store: Annotated[
        bool,
        typer.Option(
            help="re-publish stored requests selected by the trace-list filters, under new request_ids "
            "linked to the originals (Kafka header replay-of)"
        ),
    ] = False,
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
    request_id: Annotated[list[str] | None, typer.Option(help="with --from-store: these sessions")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="with --from-store: at most this many")] = None,
    suffix: Annotated[
        str | None,
        typer.Option(help="with --from-store: appended to each request_id (default ~kafka-<UTC time>)"),
    ] = None,
) -> None:
    """Produce rerank requests to Kafka (key = request_id), from a file or from the trace store."""
    from ..stream.submit import submit as produce

    settings = settings_or_exit()
    if from_store:
        if file is not None:
            raise fail("give either FILE or --from-store, not both")
        from .replay import republish

        republish(
            settings,
            limit,
            suffix,
            request_ids=tuple(request_id or ()),
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
        )
        return
    file = file or "-"
    if file != "-" and not Path(file).is_file():
        raise fail(f"no such file: {file}")

    async def main() -> int:
        source = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: ASYNC230
        try:
            sent, answered = await produce(settings, source, wait=wait, timeout_s=timeout)
        finally:
            if source is not sys.stdin.buffer:
                source.close()
        return 1 if wait and answered < sent else 0

    try:
        raise typer.Exit(run(main()))
    except (OSError, ConnectionError) as exc:
        raise fail(
            f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start it (make up) "
            "or fix LLM4RERANK_KAFKA_BOOTSTRAP"
        ) from None


def export_schemas(
    out: Annotated[Path, typer.Option(help="folder for the JSON Schema files")] = Path("schemas"),
) -> None:
    """Write the messages' JSON Schemas (the contract for producers in any language)."""
    import orjson

    from ..schemas import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.schema.json").write_bytes(
            orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )
        typer.echo(f"wrote {out / f'{name}.schema.json'}")
