"""Trace queries, rendering, export and recorded replay on a SQLite store (no services needed):
sessions walked with the heuristic policy, then every filter checked against plain Python."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest
from audit_helpers import make_requests
from typer.testing import CliRunner

from worker.audit.db import read_only_engine, reader_url
from worker.audit.export import export_jsonl, export_parquet, parquet_schema
from worker.audit.filters import FilterError, TraceFilters, check_limit, decode_cursor, parse_filters
from worker.audit.queries import TraceQueries
from worker.audit.trace import moves, render_session, with_lists
from worker.cli import app
from worker.config import Settings
from worker.replay.replayer import replay_recorded, select_sessions
from worker.replay.report import build_report, kendall_tau, session_metrics

N = 40


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """N sessions walked by the heuristic policy into a SQLite trace store."""
    from worker.offline import rerank_lines
    from worker.service import Reranker
    from worker.store.migrate import upgrade_async
    from worker.store.store import Store

    path = tmp_path_factory.mktemp("sqlite") / "traces.db"
    url = f"sqlite+aiosqlite:///{path}"
    requests = make_requests(N, seed=3, prefix="sq")
    requests[0]["goal"] = "Focus on 100% accuracy_first"  # LIKE wildcards in a goal

    async def build() -> None:
        await upgrade_async(url)
        store = Store(url)
        lines = [orjson.dumps(r) for r in requests]
        await rerank_lines(
            Reranker(Settings(), None, policy="heuristic"), lines, io.BytesIO(), concurrency=4, store=store
        )
        await store.close()

    asyncio.run(build())
    return url


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _all(url: str, filters: TraceFilters | None = None) -> list[dict[str, Any]]:
    engine = read_only_engine(url)
    try:
        return [r async for r in TraceQueries(engine).iterate(filters or TraceFilters(), batch=7)]
    finally:
        await engine.dispose()


async def _page(url: str, filters: TraceFilters, **kw: Any) -> Any:
    engine = read_only_engine(url)
    try:
        return await TraceQueries(engine).list(filters, **kw)
    finally:
        await engine.dispose()


def test_every_filter_matches_python(sqlite_store: str) -> None:
    rows = run(_all(sqlite_store))
    assert len(rows) == N
    some = rows[5]
    middle = sorted(r["received_at"] for r in rows)[N // 2]
    first, third = some["final_ranking"][0], some["final_ranking"][2]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"user": some["user_id"]}, lambda r: r["user_id"] == some["user_id"]),
        ({"status": "ok"}, lambda r: r["status"] == "ok"),
        ({"goal": "DIVERSITY"}, lambda r: "diversity" in r["goal"].lower()),
        ({"goal": "100%"}, lambda r: "100%" in r["goal"]),
        ({"goal": "y_f"}, lambda r: "y_f" in r["goal"].lower()),  # _ is not a wildcard
        ({"model": "heuristic"}, lambda r: r["model"] == "heuristic"),
        ({"prompt_version": "nope"}, lambda r: False),
        ({"node": "fairness"}, lambda r: "fairness" in r["path"]),
        ({"since": middle}, lambda r: r["received_at"] >= middle),
        ({"until": middle}, lambda r: r["received_at"] < middle),
        ({"item": third, "top_k": 3}, lambda r: third in r["final_ranking"][:3]),
        ({"item": first}, lambda r: first in r["final_ranking"][:10]),
        (
            {"request_ids": ("sq-0001", "sq-0002", "missing")},
            lambda r: r["request_id"] in ("sq-0001", "sq-0002"),
        ),
    ]
    for values, keep in cases:
        got = {r["request_id"] for r in run(_all(sqlite_store, parse_filters(**values)))}
        want = {r["request_id"] for r in rows if keep(r)}
        assert got == want, values
    assert run(_all(sqlite_store, parse_filters(goal="100%")))[0]["request_id"] == "sq-0000"


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_cursor_paging_visits_every_session_once_in_order(sqlite_store: str, order: str) -> None:
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = run(_page(sqlite_store, TraceFilters(), limit=7, cursor=cursor, order=order))
        seen += page.items
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert len(seen) == N and len({r["request_id"] for r in seen}) == N
    keys = [r["received_at"] for r in seen]
    assert keys == sorted(keys, reverse=order == "desc")
    other = run(_page(sqlite_store, TraceFilters(), limit=1, order=order)).next_cursor
    with pytest.raises(FilterError, match="made for order"):
        decode_cursor(other, "asc" if order == "desc" else "desc")


def test_inputs_are_refused_with_the_parameter_named() -> None:
    for values, where in [
        ({"node": "teleport"}, "node"),
        ({"top_k": 3}, "top_k needs item"),
        ({"status": "weird"}, "status"),
        ({"user": "x" * 300}, "user"),
        ({"item": "m1", "top_k": 101}, "top_k"),
        ({"since": "yesterday"}, "since"),
        ({"replays": "maybe"}, "replays"),
        ({"bogus": 1}, "bogus"),
    ]:
        with pytest.raises(FilterError, match=where):
            parse_filters(**values)
    for limit in (0, 201, -1):
        with pytest.raises(FilterError, match="limit"):
            check_limit(limit)
    assert check_limit(None) == 50 and check_limit(200) == 200
    for cursor in ("", "garbage", "x" * 500, "WyJub3QgYSBkYXRlIiwxLCJkZXNjIl0"):
        with pytest.raises(FilterError, match="cursor"):
            decode_cursor(cursor, "desc")


def test_reader_url_fallback_drops_the_writer_password() -> None:
    s = Settings(database_url="postgresql+asyncpg://postgres:secret@db.internal:5432/llm4rerank")
    assert reader_url(s) == "postgresql+asyncpg://llm4rerank_reader@db.internal:5432/llm4rerank"
    explicit = "postgresql+asyncpg://auditor:pw@h/x"
    assert reader_url(Settings(reader_database_url=explicit)) == explicit


def test_lists_after_each_step_follow_the_pool() -> None:
    request = {"candidates": [{"item_id": i} for i in "abcd"]}
    steps = [
        {"step": 1, "node": "accuracy", "ranking": list("bacd")},
        {"step": 2, "node": "diversity", "ranking": list("cbad")},
        {"step": 3, "node": "backward", "ranking": None, "removed": list("cbad")},
        {"step": 4, "node": "fairness", "ranking": None, "problem": "unusable"},
        {"step": 5, "node": "stop", "ranking": list("bacd")},
    ]
    out = with_lists(request, steps)
    assert [s["before"] for s in out] == [list(x) for x in ("abcd", "bacd", "cbad", "bacd", "bacd")]
    assert [s["after"] for s in out] == [list(x) for x in ("bacd", "cbad", "bacd", "bacd", "bacd")]
    assert moves(list("abcd"), list("bacd")) == [(1, "b", 1), (2, "a", -1), (3, "c", 0), (4, "d", 0)]


def test_trace_cli_show_and_list(sqlite_store: str) -> None:
    runner = CliRunner()
    shown = runner.invoke(app, ["trace", "show", "sq-0003", "--db", sqlite_store])
    assert shown.exit_code == 0, shown.output
    assert "session sq-0003" in shown.output and "path: accuracy" in shown.output
    assert "step 1  accuracy" in shown.output and "final list" in shown.output
    data = json.loads(runner.invoke(app, ["trace", "show", "sq-0003", "--db", sqlite_store, "--json"]).stdout)
    assert data["request_id"] == "sq-0003" and data["steps"][-1]["node"] == "stop"
    assert runner.invoke(app, ["trace", "show", "nope", "--db", sqlite_store]).exit_code == 1

    listed = runner.invoke(app, ["trace", "list", "--db", sqlite_store, "--limit", "5"])
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 6  # header + 5
    assert "more: --cursor" in listed.stderr
    cursor = listed.stderr.split("--cursor ")[1].split()[0]
    page2 = runner.invoke(
        app, ["trace", "list", "--db", sqlite_store, "--limit", "5", "--cursor", cursor, "--json"]
    )
    ids2 = [json.loads(line)["request_id"] for line in page2.stdout.splitlines()]
    assert len(ids2) == 5 and not set(ids2) & set(listed.stdout.split())
    every = runner.invoke(app, ["trace", "list", "--db", sqlite_store, "--all", "--json", "--limit", "9"])
    assert len(every.stdout.splitlines()) == N
    bad = runner.invoke(app, ["trace", "list", "--db", sqlite_store, "--node", "teleport"])
    assert bad.exit_code == 2 and "node" in bad.stderr


def test_render_session_names_repairs_and_costs() -> None:
    data = {
        "request_id": "r",
        "status": "ok",
        "user_id": "u",
        "goal": "g",
        "path": ["accuracy", "stop"],
        "request": {"candidates": [{"item_id": "a"}, {"item_id": "b"}]},
        "steps": [
            {
                "step": 1,
                "node": "accuracy",
                "policy": "llm",
                "ranking": ["b", "a"],
                "next_node": "stop",
                "offered": ["accuracy", "stop"],
                "pool_size": 1,
                "notes": ["call 1: dropped 1 unknown id(s): 9"],
                "retries": 2,
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "latency_ms": 3.0,
                "call_count": 1,
            },
            {"step": 2, "node": "stop", "policy": "walk", "ranking": ["b", "a"], "pool_size": 1},
        ],
    }
    text = render_session(data)
    assert "1:b(+1) 2:a(-1)" in text and "note: call 1: dropped 1 unknown" in text
    assert "retries 2, tokens 10+5" in text and "next: stop" in text


def test_render_session_shows_resumes_and_every_http_attempt() -> None:
    call = {
        "messages": [{"role": "user", "content": "rank"}],
        "error": "deadline passed: HTTP 500",
        "attempts": [
            {"status": 500, "error": "HTTP 500: down", "latency_ms": 12.0},
            {"status": None, "error": "APITimeoutError: timed out", "latency_ms": 900.0},
        ],
    }
    data = {
        "request_id": "r",
        "status": "degraded",
        "user_id": "u",
        "goal": "g",
        "path": ["accuracy", "stop"],
        "attempts": 3,
        "crashes": 1,
        "request": {"candidates": [{"item_id": "a"}, {"item_id": "b"}]},
        "steps": [
            {
                "step": 1,
                "node": "accuracy",
                "policy": "llm",
                "offered": ["accuracy"],
                "calls": [call],
                "retries": 1,
                "problem": "deadline of 2000 ms passed",
            }
        ],
    }
    text = render_session(data, calls=True)
    assert "taken up 3 time(s) (resumes: 2), crashes 1" in text
    assert "HTTP attempt 1: status 500, 12.0 ms, HTTP 500: down" in text
    assert "HTTP attempt 2: status -, 900.0 ms, APITimeoutError: timed out" in text


def test_export_one_row_per_step(sqlite_store: str, tmp_path: Path) -> None:
    async def main() -> tuple[tuple[int, int], tuple[int, int], bytes, int]:
        engine = read_only_engine(sqlite_store)
        queries = TraceQueries(engine)
        try:
            sink = io.BytesIO()
            a = await export_jsonl(queries, TraceFilters(), sink)
            b = await export_parquet(queries, TraceFilters(), tmp_path / "steps.parquet", prompts=True)
            steps = sum([len(s.steps) async for s in select_sessions(queries, TraceFilters())])
            return a, b, sink.getvalue(), steps
        finally:
            await engine.dispose()

    (s1, r1), (s2, r2), jsonl, steps = run(main())
    assert s1 == s2 == N and r1 == r2 == steps
    rows = [json.loads(line) for line in jsonl.splitlines()]
    assert len(rows) == steps and {"request_id", "step", "node", "list_after", "raw_answers"} <= set(rows[0])
    table = pq.read_table(tmp_path / "steps.parquet")
    assert table.num_rows == steps and table.schema.equals(parquet_schema())
    last = [r for r in rows if r["node"] == "stop"]
    assert all(r["ranking"] == r["final_ranking"] for r in last)

    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(
        app, ["export", "--db", sqlite_store, "--out", str(out), "--user", rows[0]["user_id"]]
    )
    assert result.exit_code == 0, result.output
    assert set(pq.read_table(out).column("user_id").to_pylist()) == {rows[0]["user_id"]}


def test_recorded_replay_of_heuristic_sessions(sqlite_store: str) -> None:
    async def main() -> list[Any]:
        engine = read_only_engine(sqlite_store)
        try:
            return await replay_recorded(Settings(), select_sessions(TraceQueries(engine), TraceFilters()))
        finally:
            await engine.dispose()

    comparisons = run(main())
    assert len(comparisons) == N and all(c.reproduced for c in comparisons)
    report = build_report("recorded", comparisons)
    assert report["identical_share"] == 1.0 and report["kendall_tau"]["min"] == 1.0


def test_rank_correlation_and_metrics() -> None:
    assert kendall_tau(list("abcd"), list("abcd")) == 1.0
    assert kendall_tau(list("abcd"), list("dcba")) == -1.0
    assert kendall_tau(list("abcd"), list("bacd")) == pytest.approx(1 - 2 / 6)
    request = {
        "request_id": "r",
        "aspects": {"diversity": {"attribute": "genre"}, "fairness": {"attribute": "year", "split_at": 2000}},
        "candidates": [
            {"item_id": "a", "features": {"genre": ["x"], "year": 1990, "label": 1}},
            {"item_id": "b", "features": {"genre": ["y"], "year": 2010}},
        ],
    }
    m = session_metrics(request, ["a", "b"], ["a"])
    assert m["hr@10"] == 1.0 and m["ndcg@10"] == 1.0 and m["mad"] == 1.0 and 0 < m["alpha_ndcg@10"] <= 1


def test_naive_times_are_utc() -> None:
    f = parse_filters(since="2025-01-01T00:00:00")
    assert f.since is not None and f.since.utcoffset() == timedelta(0)
