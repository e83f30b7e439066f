"""Runs one request end to end: plan, policy, walk, result. Shared by every surface
(offline `rerank`, the Kafka worker, replay, eval), which differ only in where requests come
from and where the journal writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .config import Settings
from .engine.nodes import WalkPlan, plan_walk
from .engine.prompts import PromptSet
from .engine.steps import Journal, LLMCall, Policy, RepairCount
from .engine.tokens import TokenCounter, counter_for
from .engine.walk import WalkOutcome, walk
from .policies.chat import ChatTransport, RecordedChat
from .policies.heuristic import HeuristicPolicy
from .policies.llm import LLMOptions, LLMPolicy
from .runconfig import RunConfig
from .schemas import Limits, RerankRequest, RerankResult, utcnow


def limits_of(settings: Settings) -> Limits:
    return Limits(
        max_candidates=settings.max_candidates,
        max_history=settings.max_history,
        max_features=settings.max_features,
        max_payload_bytes=settings.max_payload_bytes,
    )


@dataclass
class Reranker:
    """Everything a walk needs that outlives one request. A request's own RunConfig (stored at
    receipt) decides how it runs; the deployment's settings only make new RunConfigs."""

    settings: Settings
    chat: ChatTransport | None
    policy: str = "llm"
    prompts: PromptSet | None = None
    _prompt_sets: dict[str, PromptSet] = field(default_factory=dict, repr=False)
    _counter: TokenCounter | None = None

    def __post_init__(self) -> None:
        if self.prompts is None:
            self.prompts = PromptSet.load(self.settings.prompts_dir, self.settings.prompts)
        self._prompt_sets[self.prompts.name] = self.prompts

    @property
    def model(self) -> str:
        return self.settings.llm_model if self.policy == "llm" else "heuristic"

    @property
    def prompt_version(self) -> str:
        assert self.prompts is not None
        return self.prompts.version if self.policy == "llm" else "heuristic"

    def plan(self, request: RerankRequest) -> WalkPlan:
        return plan_walk(
            request,
            default_aspects=self.settings.aspects,
            max_steps=self.settings.max_steps,
            deadline_ms=self.settings.deadline_ms,
        )

    def run_config(self, request: RerankRequest) -> RunConfig:
        """What this request will run with; stored at receipt, read by every resume and replay."""
        assert self.prompts is not None
        s = self.settings
        llm = self.policy == "llm"
        return RunConfig.of_plan(
            self.plan(request),
            policy=self.policy,
            prompts=self.prompts.name if llm else None,
            prompt_version=self.prompt_version,
            model=self.model,
            llm_structured=s.llm_structured,
            llm_reasks=s.llm_reasks,
            llm_answer_shape=s.llm_answer_shape,
            llm_max_repair_share=s.llm_max_repair_share,
            llm_window=s.llm_window,
            llm_window_step=s.llm_window_step,
            llm_context_tokens=self.llm_options().context_tokens if llm else None,
            llm_tokenizer=str(s.llm_tokenizer) if s.llm_tokenizer else None,
        )

    def stored_config(self, request: RerankRequest) -> dict[str, Any]:
        """The run configuration as the store keeps it."""
        return self.run_config(request).model_dump(mode="json")

    def prompt_set(self, name: str | None) -> PromptSet:
        assert self.prompts is not None
        if name is None:
            return self.prompts
        if name not in self._prompt_sets:
            self._prompt_sets[name] = PromptSet.load(self.settings.prompts_dir, name)
        return self._prompt_sets[name]

    def make_policy(
        self, config: RunConfig, recorded: list[LLMCall] | None = None, live: bool = True
    ) -> Policy:
        if config.policy == "heuristic":
            return HeuristicPolicy()
        chat = self.chat
        if recorded is not None:
            chat = RecordedChat(recorded, then=chat if live else None)
        assert chat is not None
        return LLMPolicy(
            chat,
            self.prompt_set(config.prompts),
            structured=config.llm_structured != "none",
            reasks=config.llm_reasks,
            options=self.llm_options(config),
        )

    def llm_options(self, config: RunConfig | None = None) -> LLMOptions:
        """The policy's sizing: the session's RunConfig, else the settings (the context from the
        settings, else what the server reported)."""
        s = self.settings
        if self._counter is None:
            self._counter = counter_for(s.llm_tokenizer)
        context = s.llm_context_tokens or getattr(self.chat, "context_tokens", None) or 4096

        def of(name: str, default: Any) -> Any:
            value = getattr(config, name, None) if config is not None else None
            return default if value is None else value

        return LLMOptions(
            mode=of("llm_structured", s.llm_structured),
            shape=of("llm_answer_shape", s.llm_answer_shape),
            context_tokens=of("llm_context_tokens", context),
            max_tokens=s.llm_max_tokens,
            max_repair_share=of("llm_max_repair_share", s.llm_max_repair_share),
            window=of("llm_window", s.llm_window),
            window_step=of("llm_window_step", s.llm_window_step),
            counter=self._counter,
            field_max_chars=s.prompt_field_max_chars,
        )

    async def run(
        self,
        request: RerankRequest,
        *,
        config: RunConfig | None = None,
        journal: Journal | None = None,
        recorded: list[LLMCall] | None = None,
        live: bool = True,
        replay_of: str | None = None,
        received_at: datetime | None = None,
        attempts: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> tuple[RerankResult, WalkOutcome]:
        """Walk one request; `recorded` answers are served first (resume, replay), then `live`.

        The deadline and `latency_ms` count from `received_at` (the request's receipt) when given,
        so they hold across resumes and workers."""
        config = config or self.run_config(request)
        now = clock()
        started = now if received_at is None else now - max(0.0, (utcnow() - received_at).total_seconds())
        policy = self.make_policy(config, recorded, live)
        fallback = HeuristicPolicy() if config.policy == "llm" else None
        outcome = await walk(
            request, policy, config.plan(), journal=journal, fallback=fallback, clock=clock, started=started
        )
        heuristic = config.policy == "heuristic"
        result = RerankResult(
            request_id=request.request_id,
            status=outcome.status,
            ranking=outcome.ranking,
            path=outcome.path,
            llm_calls=outcome.llm_calls,
            usage=outcome.usage,
            model="heuristic" if heuristic else self.settings.llm_model,
            prompt_version="heuristic" if heuristic else self.prompt_set(config.prompts).version,
            latency_ms=round((clock() - started) * 1000),
            reason=outcome.reason,
            completed_at=utcnow(),
            policy=outcome.policy,
            replay_of=replay_of,
            attempts=attempts,
            repair=_repair_of(outcome),
        )
        return result, outcome


def _repair_of(outcome: WalkOutcome) -> RepairCount | None:
    """What repair did over the whole walk, None when no model answer was parsed."""
    total, seen = RepairCount(), False
    for step in outcome.steps:
        if step.repair is not None:
            total, seen = total.add(step.repair), True
    return total if seen else None
