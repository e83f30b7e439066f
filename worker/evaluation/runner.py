"""Runs every (method, Goal, request) with bounded concurrency, caching each result as one JSONL line
as soon as it finishes, so an interrupted evaluation continues where it stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from tqdm import tqdm

from ..service import Reranker
from ..status import Status
from .baselines import Baseline
from .candidates import Case, with_goal

NO_GOAL = "-"  # baselines ignore the Goal sentence
BASELINE_VERSION = "baseline-1"  # bump when a baseline's behaviour changes, so caches are redone


@dataclass
class Record:
    """One reranked request: what the metrics and the navigation statistics need."""

    method: str
    goal: str
    request_id: str
    ranking: list[str]
    path: list[str] = field(default_factory=list)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    status: str = Status.OK
    policy: str = ""
    capped: bool = False
    latency_ms: int = 0
    model: str = ""
    prompt_version: str = ""
    reason: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.method, self.goal, self.request_id)


class Method(Protocol):
    name: str
    uses_goal: bool
    model: str
    version: str

    async def run(self, case: Case, goal: str) -> Record: ...


class WalkMethod:
    """LLM4Rerank's walk under a policy (`llm` through the configured endpoint, or `heuristic`)."""

    uses_goal = True

    def __init__(self, name: str, reranker: Reranker) -> None:
        self.name, self.reranker = name, reranker
        self.model, self.version = reranker.model, reranker.prompt_version

    async def run(self, case: Case, goal: str) -> Record:
        result, outcome = await self.reranker.run(with_goal(case.request, goal))
        last = outcome.steps[-1] if outcome.steps else None
        capped = bool(last and any("step cap" in note for note in last.notes))
        return Record(
            self.name,
            goal,
            case.request.request_id,
            result.ranking,
            result.path,
            result.llm_calls,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.status,
            result.policy,
            capped,
            result.latency_ms,
            result.model,
            result.prompt_version,
            result.reason,
        )


class BaselineMethod:
    """A Goal-independent reranker function (upstream, MMR, DPP, fairness)."""

    uses_goal = False
    model = "baseline"
    version = BASELINE_VERSION

    def __init__(self, name: str, fn: Baseline) -> None:
        self.name, self.fn = name, fn

    async def run(self, case: Case, goal: str) -> Record:
        started = time.perf_counter()
        ranking = self.fn(case.request)
        return Record(
            self.name,
            NO_GOAL,
            case.request.request_id,
            ranking,
            status=Status.OK,
            policy=self.name,
            latency_ms=round((time.perf_counter() - started) * 1000),
            model=self.model,
            prompt_version=self.version,
        )


class ResultCache:
    """Append-only JSONL of Records; the latest line for a (method, goal, request_id) wins."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[tuple[str, str, str], Record]:
        out: dict[tuple[str, str, str], Record] = {}
        if not self.path.exists() or self.path.stat().st_size == 0:
            return out
        with self.path.open("rb+") as handle:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":  # a line cut short by an interruption: end it
                handle.write(b"\n")
        with self.path.open("rb") as handle:
            for line in handle:
                try:
                    record = Record(**orjson.loads(line))
                except (orjson.JSONDecodeError, TypeError):
                    continue  # a line cut short by an interruption
                out[record.key] = record
        return out

    def append(self, record: Record) -> None:
        with self.path.open("ab") as handle:
            handle.write(orjson.dumps(asdict(record)) + b"\n")


def reusable(record: Record, method: Method) -> bool:
    """A cached record counts as done when the same model and prompts (or baseline version)
    produced it and no fallback replaced the policy (those are retried on the next run)."""
    return (
        record.model == method.model and record.prompt_version == method.version and "+" not in record.policy
    )


def plan(methods: Iterable[Method], cases: list[Case], goals: list[str]) -> list[tuple[Method, str, Case]]:
    return [(m, g, c) for m in methods for g in (goals if m.uses_goal else [NO_GOAL]) for c in cases]


async def run_all(
    methods: list[Method],
    cases: list[Case],
    goals: list[str],
    cache: ResultCache,
    concurrency: int = 8,
    progress: bool = True,
) -> tuple[list[Record], int]:
    """Every (method, goal, case) once: cached results are reused, the rest run with at most
    `concurrency` in flight and are cached as they finish. Returns (records in plan order, how many
    ran now)."""
    cached = cache.load()
    jobs = plan(methods, cases, goals)
    results: dict[tuple[str, str, str], Record] = {}
    todo = []
    for method, goal, case in jobs:
        key = (method.name, goal, case.request.request_id)
        hit = cached.get(key)
        if hit is not None and reusable(hit, method):
            results[key] = hit
        else:
            todo.append((method, goal, case))
    queue: asyncio.Queue[tuple[Method, str, Case]] = asyncio.Queue()
    for job in todo:
        queue.put_nowait(job)
    bar = tqdm(
        total=len(jobs),
        initial=len(jobs) - len(todo),
        desc="eval",
        unit="req",
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )

    async def worker() -> None:
        while True:
            try:
                method, goal, case = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            record = await method.run(case, goal)
            cache.append(record)
            results[record.key] = record
            bar.update(1)

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(max(1, min(concurrency, len(todo)))):
                group.create_task(worker())
    except BaseExceptionGroup as failed:  # the first failure, as itself; finished work is cached
        raise failed.exceptions[0] from None
    finally:
        bar.close()
    ordered = [results[(m.name, g, c.request.request_id)] for m, g, c in jobs]
    return ordered, len(todo)


def as_dicts(records: Iterable[Record]) -> list[dict[str, Any]]:
    return [asdict(r) for r in records]
