"""`llm4rerank export`: sessions as one row per step, to JSONL or Parquet, for pandas or a notebook.

Rows are flat: the session's fields (prefixed `session_` where a step has a field of the same
name) repeated on each of its steps, the step's lists as lists, the raw LLM answers as a list of
strings and, with `prompts=True`, the messages sent as a JSON string. Sessions are read and
written a batch at a time, so memory stays bounded on any store size.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from ..extras import require_extra
from .filters import TraceFilters
from .queries import StoredSession, TraceQueries, select_sessions
from .trace import with_lists

if TYPE_CHECKING:
    import pyarrow as pa


@functools.cache
def parquet_schema() -> pa.Schema:
    """The Parquet file's columns; pyarrow (the `eval` extra) is imported only for Parquet."""
    require_extra("eval", "export --format parquet", ("pyarrow",))
    import pyarrow as pa

    strs = pa.list_(pa.string())
    ts = pa.timestamp("us", tz="UTC")
    return pa.schema(
        [
            ("request_id", pa.string()),
            ("user_id", pa.string()),
            ("goal", pa.string()),
            ("session_status", pa.string()),
            ("model", pa.string()),
            ("prompt_version", pa.string()),
            ("session_policy", pa.string()),
            ("path", strs),
            ("final_ranking", strs),
            ("reason", pa.string()),
            ("session_llm_calls", pa.int64()),
            ("session_prompt_tokens", pa.int64()),
            ("session_completion_tokens", pa.int64()),
            ("session_latency_ms", pa.float64()),
            ("received_at", ts),
            ("completed_at", ts),
            ("replay_of", pa.string()),
            ("replay_mode", pa.string()),
            ("step", pa.int64()),
            ("node", pa.string()),
            ("policy", pa.string()),
            ("ranking", strs),
            ("removed", strs),
            ("next_node", pa.string()),
            ("offered", strs),
            ("pool_size", pa.int64()),
            ("list_before", strs),
            ("list_after", strs),
            ("notes", strs),
            ("problem", pa.string()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("latency_ms", pa.float64()),
            ("retries", pa.int64()),
            ("call_count", pa.int64()),
            ("raw_answers", strs),
            ("call_errors", strs),
            ("messages_json", pa.string()),
        ]
    )


def step_rows(stored: StoredSession, prompts: bool) -> list[dict[str, Any]]:
    s = stored.row
    session = {
        "request_id": s["request_id"],
        "user_id": s["user_id"],
        "goal": s["goal"],
        "session_status": s["status"],
        "model": s.get("model"),
        "prompt_version": s.get("prompt_version"),
        "session_policy": s.get("policy"),
        "path": s.get("path"),
        "final_ranking": s.get("final_ranking"),
        "reason": s.get("reason"),
        "session_llm_calls": s.get("llm_calls"),
        "session_prompt_tokens": s.get("prompt_tokens"),
        "session_completion_tokens": s.get("completion_tokens"),
        "session_latency_ms": s.get("latency_ms"),
        "received_at": s.get("received_at"),
        "completed_at": s.get("completed_at"),
        "replay_of": s.get("replay_of"),
        "replay_mode": s.get("replay_mode"),
    }
    steps = [st.model_dump(mode="json") for st in stored.steps]
    rows = []
    for st in with_lists(s.get("request") or {}, steps):
        calls = st.pop("calls")
        rows.append(
            {
                **session,
                "step": st["step"],
                "node": st["node"],
                "policy": st["policy"],
                "ranking": st["ranking"],
                "removed": st["removed"],
                "next_node": st["next_node"],
                "offered": st["offered"],
                "pool_size": st["pool_size"],
                "list_before": st["before"],
                "list_after": st["after"],
                "notes": st["notes"],
                "problem": st["problem"],
                "prompt_tokens": st["prompt_tokens"],
                "completion_tokens": st["completion_tokens"],
                "latency_ms": st["latency_ms"],
                "retries": st["retries"],
                "call_count": len(calls),
                "raw_answers": [c["raw"] for c in calls if c["raw"] is not None],
                "call_errors": [c["error"] for c in calls if c["error"] is not None],
                "messages_json": orjson.dumps([c["messages"] for c in calls]).decode() if prompts else None,
            }
        )
    return rows


async def _batches(
    queries: TraceQueries, filters: TraceFilters, limit: int | None, prompts: bool, rows_per_batch: int = 5000
) -> AsyncIterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    async for stored in select_sessions(queries, filters, limit):
        batch += step_rows(stored, prompts)
        if len(batch) >= rows_per_batch:
            yield batch
            batch = []
    if batch:
        yield batch


async def export_jsonl(
    queries: TraceQueries,
    filters: TraceFilters,
    sink: IO[bytes],
    *,
    limit: int | None = None,
    prompts: bool = False,
) -> tuple[int, int]:
    """Returns (sessions, rows) written."""
    rows = 0
    sessions: set[str] = set()
    async for batch in _batches(queries, filters, limit, prompts):
        for row in batch:
            if not prompts:
                row.pop("messages_json")
            sink.write(orjson.dumps(row) + b"\n")
            sessions.add(row["request_id"])
        rows += len(batch)
    sink.flush()
    return len(sessions), rows


async def export_parquet(
    queries: TraceQueries,
    filters: TraceFilters,
    path: Path,
    *,
    limit: int | None = None,
    prompts: bool = False,
) -> tuple[int, int]:
    """One Parquet file with parquet_schema() (an empty selection still writes the schema)."""
    schema = parquet_schema()
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    sessions: set[str] = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(path), schema, compression="zstd") as writer:
        async for batch in _batches(queries, filters, limit, prompts):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            rows += len(batch)
            sessions.update(r["request_id"] for r in batch)
    return len(sessions), rows
