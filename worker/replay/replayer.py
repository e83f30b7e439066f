"""Replays of stored sessions.

Recorded: the stored raw LLM answers are fed back in order (no LLM call) and re-parsed by the
current code; the walk must reach the same steps, path and final ranking. This is the regression
check for every change of the engine, so it writes nothing and reports every difference by step.

Live: the stored requests run again against another model, prompt set or configuration; the new
sessions are stored under new request_ids linked to the originals (replay_of, replay_mode=live).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from ..audit.queries import StoredSession, select_sessions
from ..config import Settings
from ..engine.nodes import STOP
from ..engine.prompts import PromptSet
from ..engine.steps import ListJournal, LLMCall, StepRecord
from ..errors import ConfigError, DeadlineExceeded, ReplayExhausted, RequestError
from ..runconfig import RunConfig
from ..schemas import RerankRequest, RerankResult
from ..service import Reranker, limits_of
from ..status import Status

CAP_NOTE = re.compile(r"step cap of (\d+) LLM calls reached")
CRASHED = re.compile(r"^the walk (crashed|failed) \d+ time")
OWNER = f"replay-{os.getpid()}"
__all__ = [
    "Comparison",
    "Outcome",
    "RecordedReplayer",
    "StepDiff",
    "replay_live",
    "replay_recorded",
    "select_sessions",
]


@dataclass
class Outcome:
    """What one run produced, whether read from the store or from a replay."""

    request_id: str
    status: str | None
    path: list[str]
    ranking: list[str]
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None
    reason: str | None = None

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Outcome:
        return cls(
            str(row["request_id"]),
            row.get("status"),
            list(row.get("path") or []),
            list(row.get("final_ranking") or []),
            row.get("llm_calls") or 0,
            row.get("prompt_tokens") or 0,
            row.get("completion_tokens") or 0,
            row.get("latency_ms"),
            row.get("reason"),
        )

    @classmethod
    def of_result(cls, result: RerankResult) -> Outcome:
        return cls(
            result.request_id,
            result.status,
            list(result.path),
            list(result.ranking),
            result.llm_calls,
            result.usage.prompt_tokens,
            result.usage.completion_tokens,
            result.latency_ms,
            result.reason,
        )


@dataclass
class StepDiff:
    step: int
    node: str
    field: str
    stored: Any
    replayed: Any


@dataclass
class Comparison:
    """An original session next to its replay; `error` when the replay could not finish."""

    request: dict[str, Any]
    original: Outcome
    replay: Outcome | None
    replay_id: str | None = None
    diffs: list[StepDiff] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reproduced(self) -> bool:
        r, o = self.replay, self.original
        return (
            self.error is None
            and not self.diffs
            and r is not None
            and r.status == o.status
            and r.path == o.path
            and r.ranking == o.ranking
        )


# recorded --------------------------------------------------------------------------------------
class _AfterRecording:
    """What the walk meets once the stored answers run out: the original's deadline when the
    session ended on one (so it ends the same way), otherwise ReplayExhausted (a difference)."""

    def __init__(self, deadline: bool) -> None:
        self.deadline = deadline

    async def complete(
        self,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        deadline: float,
        max_tokens: int | None = None,
    ) -> LLMCall:
        if self.deadline:
            raise DeadlineExceeded("the stored session ran out of time here")
        raise ReplayExhausted("the walk asked for more LLM answers than the session stored")


def counted_calls(step: StepRecord) -> int:
    return sum(1 for c in step.calls if c.raw is not None or c.error is not None)


def infer_max_steps(stored: StoredSession, default: int, reasks: int) -> int:
    """The step cap the original ran with (the store does not keep it): the cap named in the
    Stop step's note; the exact call count when the last LLM step was cut short of its re-asks;
    otherwise at least the number of calls made."""
    calls = sum(counted_calls(s) for s in stored.steps)
    for step in reversed(stored.steps):
        if step.node == STOP:
            for note in step.notes:
                if m := CAP_NOTE.search(note):
                    return int(m.group(1))
        if step.calls:
            if step.problem and counted_calls(step) < 1 + reasks:
                return max(calls, 1)
            break
    return max(default, calls)


class RecordedReplayer:
    """Builds, per stored session, the Reranker its original ran with (prompt set, output mode,
    policy and step cap read from the stored session) and replays it without any LLM."""

    def __init__(self, settings: Settings, max_steps: int | None = None) -> None:
        self.settings = settings
        self.max_steps = max_steps
        self._prompts: dict[str, PromptSet] = {}

    def _prompt_set(self, name: str) -> PromptSet:
        if name not in self._prompts:
            self._prompts[name] = PromptSet.load(self.settings.prompts_dir, name)
        return self._prompts[name]

    def reranker_for(self, stored: StoredSession) -> tuple[Reranker, list[str], RunConfig | None]:
        if stored.row.get("run_config") and self.max_steps is None:
            try:
                return self._from_run_config(stored, RunConfig.model_validate(stored.row["run_config"]))
            except ValidationError:
                pass  # an older shape of the record: infer as for sessions without one
        reranker, notes = self._inferred(stored)
        return reranker, notes, None

    def _from_run_config(
        self, stored: StoredSession, config: RunConfig
    ) -> tuple[Reranker, list[str], RunConfig]:
        """Sessions stored with their RunConfig: replay exactly what they ran with."""
        row, notes = stored.row, []
        heuristic = config.policy == "heuristic"
        name = config.prompts or self.settings.prompts
        prompts = self._prompt_set(name)
        version = row.get("prompt_version") or ""
        if not heuristic and version and prompts.version != version:
            notes.append(f"prompt templates changed since the session ran ({version} -> {prompts.version})")
        config = config.model_copy(update={"prompts": name})
        deadline = "deadline of" in (row.get("reason") or "")
        reranker = Reranker(
            config.settings_for(self.settings, model=row.get("model")),
            _AfterRecording(deadline),
            policy=config.policy,
            prompts=prompts,
        )
        return reranker, notes, config

    def _inferred(self, stored: StoredSession) -> tuple[Reranker, list[str]]:
        """Older sessions (no `run_config`): infer prompt set, output mode and step cap."""
        row, notes = stored.row, []
        heuristic = row.get("policy") == "heuristic" or row.get("model") == "heuristic"
        version = row.get("prompt_version") or ""
        name = version.rsplit("-", 1)[0] if "-" in version else self.settings.prompts
        if heuristic or not (self.settings.prompts_dir / name).is_dir():
            if not heuristic and version:
                notes.append(f"prompt set of {version!r} not found; parsed with {self.settings.prompts!r}")
            name = self.settings.prompts
        prompts = self._prompt_set(name)
        if not heuristic and version and prompts.version != version:
            notes.append(f"prompt templates changed since the session ran ({version} -> {prompts.version})")
        calls = [c for s in stored.steps for c in s.calls]
        structured = self.settings.llm_structured
        if calls:
            structured = "json_schema" if any(c.response_format for c in calls) else "none"
        default = self.max_steps or self.settings.max_steps
        update = {
            "max_steps": infer_max_steps(stored, default, self.settings.llm_reasks),
            "llm_structured": structured,
            "prompts": name,
            "llm_model": row.get("model") or self.settings.llm_model,
        }
        deadline = "deadline of" in (row.get("reason") or "")
        reranker = Reranker(
            self.settings.with_overrides(**update),
            _AfterRecording(deadline),
            policy="heuristic" if heuristic else "llm",
            prompts=prompts,
        )
        return reranker, notes

    async def replay(self, stored: StoredSession) -> Comparison:
        original = Outcome.of_row(stored.row)
        request = stored.row["request"]
        try:
            reranker, notes, config = self.reranker_for(stored)
            parsed = RerankRequest.model_validate(request, context={"limits": limits_of(self.settings)})
        except (ConfigError, RequestError, ValueError) as exc:
            return Comparison(request, original, None, error=f"cannot set up the replay: {exc}")
        journal = ListJournal()
        recorded = [c for s in stored.steps for c in s.calls]
        comparison = Comparison(request, original, None, replay_id=stored.request_id, notes=notes)
        crashed = original.status == Status.FAILED and bool(CRASHED.search(original.reason or ""))
        try:
            result, _ = await reranker.run(
                parsed, config=config, journal=journal, recorded=recorded, live=True
            )
            comparison.replay = Outcome.of_result(result)
            if crashed:
                comparison.notes.append("the session failed after crashes; the replay finished")
        except Exception as exc:  # the engine under test may be broken: report, do not stop
            if crashed:  # like the original, the walk cannot finish from what was stored
                comparison.replay = Outcome(
                    original.request_id, Status.FAILED, [], [c.item_id for c in parsed.candidates]
                )
                comparison.notes.append(f"the walk stops as stored: {type(exc).__name__}: {exc}")
            elif isinstance(exc, ReplayExhausted):
                comparison.error = str(exc)
            else:
                comparison.error = f"{type(exc).__name__}: {exc}"
        comparison.diffs = diff_steps(stored.steps, journal.steps)
        return comparison


def diff_steps(stored: list[StepRecord], replayed: list[StepRecord]) -> list[StepDiff]:
    """Every field that decides the walk, compared step by step."""
    diffs: list[StepDiff] = []
    for i in range(max(len(stored), len(replayed))):
        a = stored[i] if i < len(stored) else None
        b = replayed[i] if i < len(replayed) else None
        if a is None or b is None:
            only = a or b
            assert only is not None
            diffs.append(
                StepDiff(only.step, only.node, "step", only.node if a else None, only.node if b else None)
            )
            continue
        for name in ("node", "ranking", "removed", "next_node", "offered"):
            x, y = getattr(a, name), getattr(b, name)
            if x != y:
                diffs.append(StepDiff(a.step, a.node, name, x, y))
    return diffs


async def replay_recorded(
    settings: Settings,
    sessions: AsyncIterator[StoredSession],
    *,
    max_steps: int | None = None,
    on_result: Callable[[Comparison], None] | None = None,
) -> list[Comparison]:
    """Replay every session in turn (CPU-bound: no concurrency to gain)."""
    replayer = RecordedReplayer(settings, max_steps)
    out = []
    async for stored in sessions:
        comparison = await replayer.replay(stored)
        out.append(comparison)
        if on_result is not None:
            on_result(comparison)
    return out


# live ------------------------------------------------------------------------------------------
def default_tag() -> str:
    return "live-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")


def replay_request(request: dict[str, Any], new_id: str, max_steps: int | None) -> dict[str, Any]:
    """The original request under a new id; a CLI step cap replaces the request's own."""
    out = {**request, "request_id": new_id}
    if max_steps is not None:
        out["options"] = {**(request.get("options") or {}), "max_steps": max_steps}
    return out


async def replay_live(
    settings: Settings,
    sessions: AsyncIterator[StoredSession],
    *,
    store_url: str,
    tag: str,
    concurrency: int,
    max_steps: int | None = None,
    on_result: Callable[[Comparison], None] | None = None,
) -> list[Comparison]:
    """Run the stored requests again with `settings` (already overridden by the CLI) and store
    the new sessions linked to the originals. Idempotent per tag: a second run with the same
    tag reads the sessions it stored the first time instead of calling the model again."""
    from ..policies.chat import OpenAIChat
    from ..sessions import run_session
    from ..store.journal import GroupCommitWriter
    from ..store.store import Store

    chat = OpenAIChat(settings)
    store = Store(store_url)
    writer = GroupCommitWriter(store)
    limit = asyncio.Semaphore(concurrency)
    out: list[Comparison] = []
    order: dict[str, int] = {}
    try:
        await chat.check()
        reranker = Reranker(settings, chat)

        async def one(stored: StoredSession) -> Comparison:
            original = Outcome.of_row(stored.row)
            new_id = f"{stored.request_id}~{tag}"
            comparison = Comparison(stored.row["request"], original, None, replay_id=new_id)
            try:
                request = RerankRequest.model_validate(
                    replay_request(stored.row["request"], new_id, max_steps),
                    context={"limits": limits_of(settings)},
                )
                async with limit:
                    await store.receive(
                        [(request, None)],
                        replay_of=stored.request_id,
                        replay_mode="live",
                        run_config=reranker.stored_config,
                    )
                    done = await run_session(store, writer, reranker, new_id, OWNER, settings.lease_s)
                if done is not None:
                    comparison.replay = Outcome.of_result(done[0])
                else:
                    stored_result = await store.result_of(new_id)
                    if stored_result is None:
                        comparison.error = "another process holds this replay session; retry later"
                    else:
                        comparison.replay = Outcome.of_result(RerankResult.model_validate(stored_result))
                        comparison.notes.append("stored by an earlier run with the same tag")
            except Exception as exc:  # one session's failure is reported, the others go on
                comparison.error = f"{type(exc).__name__}: {exc}"
            if on_result is not None:
                on_result(comparison)
            return comparison

        pending: set[asyncio.Task[Comparison]] = set()
        async for stored in sessions:
            order[stored.request_id] = len(order)
            if len(pending) >= concurrency * 2:
                done_tasks, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                out += [t.result() for t in done_tasks]
            pending.add(asyncio.create_task(one(stored)))
        if pending:
            done_tasks, _ = await asyncio.wait(pending)
            out += [t.result() for t in done_tasks]
    finally:
        await writer.stop()
        await chat.close()
        await store.close()
    return sorted(out, key=lambda c: order[c.original.request_id])
