"""One replay run from selection to report: what `llm4rerank replay` does, without the terminal.

The command line parses options and prints; this module selects the finished sessions, runs them
recorded or live, and builds the report and the exit code."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import ValidationError

from ..audit.db import read_only_engine, safe_url
from ..audit.filters import TraceFilters
from ..audit.queries import StoredSession, TraceQueries
from ..config import Settings
from ..status import FINISHED
from .replayer import Comparison, default_tag, replay_live, replay_recorded, select_sessions
from .report import build_report

Mode = Literal["recorded", "live"]


class ReplayUsageError(ValueError):
    """Options that cannot work together; the message names the fix."""


@dataclass(frozen=True)
class LiveTarget:
    """Where a live replay runs: the endpoint, model, prompt set and output mode it overrides."""

    base_url: str | None = None
    llm_model: str | None = None
    prompts: str | None = None
    structured: str | None = None
    tag: str | None = None
    store: str | None = None
    concurrency: int = 8

    def given(self) -> bool:
        return any(
            v is not None
            for v in (self.base_url, self.llm_model, self.prompts, self.structured, self.tag, self.store)
        )


@dataclass
class ReplayRun:
    """The comparisons plus what could not be replayed (unknown ids, unfinished sessions)."""

    comparisons: list[Comparison]
    requested: tuple[str, ...]
    selected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        return sorted(set(self.requested) - set(self.selected) - set(self.skipped))


def live_settings(settings: Settings, target: LiveTarget, max_steps: int | None) -> Settings:
    """The settings a live replay runs with: validated like any settings, prompt set loadable."""
    from ..engine.prompts import PromptSet
    from ..errors import ConfigError

    try:
        live = settings.with_overrides(
            llm_base_url=target.base_url,
            llm_model=target.llm_model,
            prompts=target.prompts,
            llm_structured=target.structured,
            max_steps=max_steps,
        )
        PromptSet.load(live.prompts_dir, live.prompts)
    except ConfigError as exc:
        raise ReplayUsageError(str(exc)) from None
    except ValidationError as exc:
        raise ReplayUsageError(f"bad live replay configuration: {exc.errors()[0]['msg']}") from None
    if not live.llm_base_url:
        raise ReplayUsageError(
            "live replay needs an endpoint: pass --base-url or set LLM4RERANK_LLM_BASE_URL"
        )
    return live


async def run_replay(
    settings: Settings,
    mode: Mode,
    filters: TraceFilters,
    url: str,
    *,
    requested: tuple[str, ...] = (),
    limit: int | None = None,
    max_steps: int | None = None,
    live: Settings | None = None,
    target: LiveTarget | None = None,
    on_result: Callable[[Comparison], None] | None = None,
) -> ReplayRun:
    """Replay the finished sessions the filters select (unfinished ones are skipped and listed)."""
    out = ReplayRun([], requested)

    async def finished_only() -> AsyncIterator[StoredSession]:
        engine = read_only_engine(url)
        try:
            stored: StoredSession
            async for stored in select_sessions(TraceQueries(engine), filters, limit):
                if stored.row["status"] in FINISHED:
                    out.selected.append(stored.request_id)
                    yield stored
                else:
                    out.skipped.append(stored.request_id)
        finally:
            await engine.dispose()

    if mode == "recorded":
        out.comparisons = await replay_recorded(
            settings, finished_only(), max_steps=max_steps, on_result=on_result
        )
    else:
        assert live is not None and target is not None
        out.comparisons = await replay_live(
            live,
            finished_only(),
            store_url=target.store or url,
            tag=target.tag or default_tag(),
            concurrency=target.concurrency,
            max_steps=max_steps,
            on_result=on_result,
        )
    return out


def replay_report(
    settings: Settings,
    mode: Mode,
    run: ReplayRun,
    filters: TraceFilters,
    url: str,
    *,
    labels: dict[str, list[str]],
    max_steps: int | None = None,
    live: Settings | None = None,
    target: LiveTarget | None = None,
) -> dict[str, Any]:
    """The JSON report: aggregate and per-session differences, with the configuration that ran."""
    config: dict[str, Any] = {
        "db": safe_url(url),
        "filters": filters.model_dump(mode="json", exclude_defaults=True),
    }
    if mode == "live":
        assert live is not None and target is not None
        config.update(
            {
                "llm_base_url": live.llm_base_url,
                "llm_model": live.llm_model,
                "prompts": live.prompts,
                "llm_structured": live.llm_structured,
                "max_steps": max_steps,
                "concurrency": target.concurrency,
                "store": safe_url(target.store or url),
            }
        )
    return build_report(mode, run.comparisons, labels=labels, default_aspects=settings.aspects, config=config)


def exit_code(mode: Mode, run: ReplayRun, report: dict[str, Any]) -> int:
    """1 when a request_id was not found, a recorded replay differs or a live one failed."""
    if mode == "recorded":
        bad = sum(1 for c in run.comparisons if not c.reproduced)
        return 1 if bad or run.missing else 0
    return 1 if report["errors"] or run.missing else 0
