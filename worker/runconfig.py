"""The configuration one request runs with, fixed at receipt and stored with its session.

A resume (on any worker, after any redeploy) and a recorded replay read this record instead of
today's settings, so a session runs with one configuration from receipt to result.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .engine.nodes import ASPECT_NODES, WalkPlan
from .schemas import AspectConfig


class RunConfig(BaseModel):
    """What a walk reads besides the request: policy, prompts, output mode and the resolved plan."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    policy: Literal["llm", "heuristic"] = "llm"
    prompts: str | None = Field(None, description="prompt set name (None for the heuristic)")
    prompt_version: str | None = None
    model: str | None = None
    llm_structured: str = "json_schema"
    llm_reasks: int = 1
    llm_answer_shape: str = "list"
    llm_max_repair_share: float | None = None
    llm_window: int | None = None
    llm_window_step: int | None = None
    llm_context_tokens: int | None = None
    llm_tokenizer: str | None = None
    max_steps: int
    deadline_ms: int
    aspects: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict, description="enabled aspect nodes and their attribute (None: none needed)")

    def plan(self) -> WalkPlan:
        """The walk's plan; nodes in the graph's order (the store may not keep key order)."""
        order = [n for n in ASPECT_NODES if n in self.aspects]
        order += sorted(n for n in self.aspects if n not in ASPECT_NODES)
        return WalkPlan(
            aspects={name: (AspectConfig.model_validate(self.aspects[name])
                            if self.aspects[name] is not None else None) for name in order},
            max_steps=self.max_steps, deadline_ms=self.deadline_ms)

    @classmethod
    def of_plan(cls, plan: WalkPlan, **fields: Any) -> RunConfig:
        return cls(max_steps=plan.max_steps, deadline_ms=plan.deadline_ms,
                   aspects={name: (a.model_dump(exclude_none=True) if a is not None else None)
                            for name, a in plan.aspects.items()}, **fields)
