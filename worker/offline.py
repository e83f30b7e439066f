"""`llm4rerank rerank`: JSONL requests in, JSONL results out, in input order, no Kafka."""

from __future__ import annotations

import asyncio
import os
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import IO, Any

import orjson

from .engine.steps import ListJournal
from .errors import RequestError
from .schemas import RerankRequest, RerankResult, parse_request, request_id_of
from .service import Reranker, limits_of
from .sessions import run_session
from .store.journal import GroupCommitWriter
from .store.store import Store

OWNER = f"offline-{os.getpid()}"


@dataclass
class RunStats:
    ok: int = 0
    degraded: int = 0
    failed: int = 0
    invalid: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.invalid or self.failed else 0


def error_record(line_no: int, raw: bytes, error: RequestError) -> dict[str, Any]:
    return {
        "line": line_no,
        "request_id": request_id_of(raw),
        "status": "invalid",
        "error": {"code": error.code, "message": error.message, "details": error.details},
    }


async def rerank_lines(
    reranker: Reranker,
    lines: Iterable[bytes],
    out: IO[bytes],
    trace: IO[bytes] | None = None,
    concurrency: int = 16,
    store: Store | None = None,
) -> RunStats:
    """Walk every request with at most `concurrency` in flight; memory stays bounded.

    With a `store`, sessions and steps are kept there (SQLite or PostgreSQL) and a request_id
    already stored returns its stored result without new LLM calls."""
    stats = RunStats()
    limits = limits_of(reranker.settings)
    pending: deque[asyncio.Task[tuple[dict[str, Any], list[bytes]]]] = deque()

    async def one(line_no: int, raw: bytes) -> tuple[dict[str, Any], list[bytes]]:
        try:
            request = parse_request(raw, limits)
            reranker.plan(request)
        except RequestError as exc:
            stats.invalid += 1
            return error_record(line_no, raw, exc), []
        journal = ListJournal()
        if store is None:
            result, _ = await reranker.run(request, journal=journal)
        else:
            try:
                result = await _stored(request, journal, raw)
            except RequestError as exc:
                stats.invalid += 1
                return error_record(line_no, raw, exc), []
        setattr(stats, result.status, getattr(stats, result.status) + 1)
        steps = [
            orjson.dumps({"request_id": request.request_id, **s.model_dump(mode="json")})
            for s in journal.steps
        ]
        return result.model_dump(mode="json"), steps

    writer = GroupCommitWriter(store) if store is not None else None

    async def _stored(request: RerankRequest, journal: ListJournal, raw: bytes) -> RerankResult:
        assert store is not None and writer is not None
        receipt = await store.receive_checked(
            [(request, None)], texts=[raw.decode("utf-8")], run_config=reranker.stored_config
        )
        if request.request_id in receipt.conflicts:
            first = receipt.conflicts[request.request_id].isoformat()
            raise RequestError(
                "conflict",
                f"request_id {request.request_id!r} was first received at {first} with different content",
                {"first_received_at": first},
            )
        done = await run_session(store, writer, reranker, request.request_id, OWNER, 300.0)
        if done is not None:
            if done[1] is not None:
                journal.steps = done[1].steps
            return done[0]
        stored = await store.result_of(request.request_id)
        if stored is None:
            raise RuntimeError(f"{request.request_id} is held by another process; retry later")
        return RerankResult.model_validate(stored)

    async def flush_head() -> None:
        record, steps = await pending.popleft()
        out.write(orjson.dumps(record) + b"\n")
        if trace is not None:
            for step in steps:
                trace.write(step + b"\n")

    async for line_no, raw in _numbered(lines):
        if len(pending) >= concurrency:
            await flush_head()
        pending.append(asyncio.create_task(one(line_no, raw)))
    while pending:
        await flush_head()
    out.flush()
    if writer is not None:
        await writer.stop()
    return stats


async def _numbered(lines: Iterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    for number, raw in enumerate(lines, start=1):
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield number, raw
