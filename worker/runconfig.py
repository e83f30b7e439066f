"""The configuration one request runs with, fixed at receipt and stored with its session.

A resume (on any worker, after any redeploy) and a recorded replay read this record instead of
today's settings, so a session runs with one configuration from receipt to result. It is the
contract between the settings (which make it), the walk (which reads its plan), the store (which
keeps it as JSON in `sessions.run_config`) and replay (which reads it back). Records stored by
older versions still load: fields added since have defaults, unknown ones are ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Settings
from .engine.nodes import ASPECT_NODES, WalkPlan
from .schemas import AspectConfig

SIZING = (
    "llm_answer_shape",
    "llm_max_repair_share",
    "llm_window",
    "llm_window_step",
    "llm_context_tokens",
    "llm_tokenizer",
)  # stored since migration 0005


class RunConfig(BaseModel):
    """What a walk reads besides the request: policy, prompts, output mode and the resolved plan."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    policy: Literal["llm", "heuristic"] = "llm"
    prompts: str | None = Field(None, description="prompt set name (None for the heuristic)")
    prompt_version: str | None = None
    model: str | None = None
    llm_structured: Literal["json_schema", "tgi", "json_object", "none"] = "json_schema"
    llm_reasks: int = Field(1, ge=0)
    llm_answer_shape: Literal["list", "keys"] = "list"
    llm_max_repair_share: float | None = None
    llm_window: int | None = None
    llm_window_step: int | None = None
    llm_context_tokens: int | None = None
    llm_tokenizer: str | None = None
    max_steps: int = Field(ge=1)
    deadline_ms: int = Field(ge=1)
    aspects: dict[str, dict[str, Any] | None] = Field(
        default_factory=dict, description="enabled aspect nodes and their attribute (None: none needed)"
    )

    def plan(self) -> WalkPlan:
        """The walk's plan; nodes in the graph's order (the store may not keep key order)."""
        order = [n for n in ASPECT_NODES if n in self.aspects]
        order += sorted(n for n in self.aspects if n not in ASPECT_NODES)
        return WalkPlan(
            aspects={
                name: (
                    AspectConfig.model_validate(self.aspects[name])
                    if self.aspects[name] is not None
                    else None
                )
                for name in order
            },
            max_steps=self.max_steps,
            deadline_ms=self.deadline_ms,
        )

    @classmethod
    def of_plan(cls, plan: WalkPlan, **fields: Any) -> RunConfig:
        return cls(
            max_steps=plan.max_steps,
            deadline_ms=plan.deadline_ms,
            aspects={
                name: (a.model_dump(exclude_none=True) if a is not None else None)
                for name, a in plan.aspects.items()
            },
            **fields,
        )

    def settings_for(self, settings: Settings, *, model: str | None = None) -> Settings:
        """`settings` as this session ran with them: its prompt set, model and sizing (the
        tokenizer among them), validated like any settings."""
        return settings.with_overrides(
            prompts=self.prompts, llm_model=model or self.model, **{key: getattr(self, key) for key in SIZING}
        )
