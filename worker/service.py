"""Runs one request end to end: plan, policy, walk, result. Shared by every surface
(offline `rerank`, the Kafka worker, replay, eval), which differ only in where requests come
from and where the journal writes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
    """Everything a walk needs that outlives one request."""

    settings: Settings
    chat: ChatTransport | None
    policy: str = "llm"
    on_unavailable: str = "degrade"
    prompts: PromptSet | None = None
    _counter: TokenCounter | None = None

    def __post_init__(self) -> None:
        if self.prompts is None:
            self.prompts = PromptSet.load(self.settings.prompts_dir, self.settings.prompts)

    @property
    def model(self) -> str:
        return self.settings.llm_model if self.policy == "llm" else "heuristic"

    @property
    def prompt_version(self) -> str:
        assert self.prompts is not None
        return self.prompts.version if self.policy == "llm" else "heuristic"

    def plan(self, request: RerankRequest) -> WalkPlan:
        return plan_walk(request, default_aspects=self.settings.aspects,
                         max_steps=self.settings.max_steps, deadline_ms=self.settings.deadline_ms)

    def run_config(self, request: RerankRequest) -> dict[str, Any]:
        """What this walk ran with, stored beside its steps so a recorded replay can rebuild it."""
        plan = self.plan(request)
        return {
            "policy": self.policy, "prompts": self.prompts.name if self.prompts else None,
            "llm_structured": self.settings.llm_structured, "llm_reasks": self.settings.llm_reasks,
            "llm_answer_shape": self.settings.llm_answer_shape,
            "llm_max_repair_share": self.settings.llm_max_repair_share,
            "llm_window": self.settings.llm_window, "llm_window_step": self.settings.llm_window_step,
            "llm_context_tokens": self.llm_options().context_tokens if self.policy == "llm" else None,
            "llm_tokenizer": str(self.settings.llm_tokenizer) if self.settings.llm_tokenizer else None,
            "max_steps": plan.max_steps, "deadline_ms": plan.deadline_ms,
            "aspects": {name: (a.model_dump(exclude_none=True) if a is not None else None)
                        for name, a in plan.aspects.items()},
        }

    def make_policy(self, recorded: list[LLMCall] | None = None, live: bool = True) -> Policy:
        if self.policy == "heuristic":
            return HeuristicPolicy()
        chat = self.chat
        if recorded is not None:
            chat = RecordedChat(recorded, then=chat if live else None)
        assert chat is not None and self.prompts is not None
        return LLMPolicy(chat, self.prompts, structured=self.settings.llm_structured != "none",
                         reasks=self.settings.llm_reasks, on_unavailable=self.on_unavailable,
                         options=self.llm_options())

    def llm_options(self) -> LLMOptions:
        """The policy's sizing: the context from the settings, else what the server reported."""
        s = self.settings
        if self._counter is None:
            self._counter = counter_for(s.llm_tokenizer)
        context = s.llm_context_tokens or getattr(self.chat, "context_tokens", None) or 4096
        return LLMOptions(mode=s.llm_structured, shape=s.llm_answer_shape, context_tokens=context,
                          max_tokens=s.llm_max_tokens, max_repair_share=s.llm_max_repair_share,
                          window=s.llm_window, window_step=s.llm_window_step,
                          counter=self._counter, field_max_chars=s.prompt_field_max_chars)

    async def run(
        self,
        request: RerankRequest,
        *,
        journal: Journal | None = None,
        recorded: list[LLMCall] | None = None,
        live: bool = True,
        replay_of: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> tuple[RerankResult, WalkOutcome]:
        """Walk one request; `recorded` answers are served first (resume, replay), then `live`."""
        started = clock()
        policy = self.make_policy(recorded, live)
        fallback = HeuristicPolicy() if self.policy == "llm" else None
        outcome = await walk(request, policy, self.plan(request), journal=journal,
                             fallback=fallback, clock=clock)
        result = RerankResult(
            request_id=request.request_id,
            status=outcome.status,  # type: ignore[arg-type]
            ranking=outcome.ranking,
            path=outcome.path,
            llm_calls=outcome.llm_calls,
            usage=outcome.usage,
            model=self.model,
            prompt_version=self.prompt_version,
            latency_ms=round((clock() - started) * 1000),
            reason=outcome.reason,
            completed_at=utcnow(),
            policy=outcome.policy,
            replay_of=replay_of,
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
