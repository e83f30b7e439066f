"""The graph's nodes. A new aspect is a focus template in `prompts/<set>/nodes/` plus an entry here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RequestError
from ..schemas import AspectConfig, RerankRequest

ACCURACY, DIVERSITY, FAIRNESS, NOVELTY = "accuracy", "diversity", "fairness", "novelty"
BACKWARD, STOP = "backward", "stop"
FUNCTIONAL = (BACKWARD, STOP)


@dataclass(frozen=True)
class AspectNode:
    """An aspect node returns a full reranked list. A node that `needs_attribute` is offered only
    when the request or the deployment (LLM4RERANK_ASPECTS) names one: Novelty is off until then.
    `goal_words` are how a Goal sentence names the aspect, and `heuristic` names the reranker of
    `heuristics.RERANKERS` that the heuristic policy (and so sim-llm) applies at this node."""

    name: str
    needs_attribute: bool
    goal_words: tuple[str, ...]
    heuristic: str


ASPECT_NODES: dict[str, AspectNode] = {
    n.name: n
    for n in (
        AspectNode(ACCURACY, False, ("accura", "relevan", "precis", "match", "interest"), "score"),
        AspectNode(DIVERSITY, True, ("divers", "variety", "varied", "coverage"), "coverage"),
        AspectNode(FAIRNESS, True, ("fair", "equal", "balanced exposure", "unbiased"), "groups"),
        AspectNode(NOVELTY, True, ("novel", "new to", "unfamiliar", "serendip", "fresh"), "unseen"),
    )
}
ALL_NODES = (*ASPECT_NODES, *FUNCTIONAL)


@dataclass(frozen=True)
class WalkPlan:
    """What one request's walk may do, resolved from the request and the deployment's defaults."""

    aspects: dict[str, AspectConfig | None]
    max_steps: int
    deadline_ms: int

    @property
    def aspect_names(self) -> tuple[str, ...]:
        return tuple(self.aspects)


def plan_walk(
    request: RerankRequest,
    *,
    default_aspects: dict[str, dict[str, Any]] | None = None,
    max_steps: int = 5,
    deadline_ms: int = 30_000,
) -> WalkPlan:
    """Enable each aspect node whose attribute is configured (request first, then deployment)."""
    unknown = set(request.aspects) - set(ASPECT_NODES)
    if unknown:
        raise RequestError(
            "unknown_aspect",
            f"aspects: unknown aspect node(s) {sorted(unknown)}; known: {sorted(ASPECT_NODES)}",
        )
    defaults = default_aspects or {}
    aspects: dict[str, AspectConfig | None] = {}
    for name, node in ASPECT_NODES.items():
        if not node.needs_attribute:
            aspects[name] = None
            continue
        raw = request.aspects.get(name) or defaults.get(name)
        if raw is None:
            continue
        config = raw if isinstance(raw, AspectConfig) else AspectConfig.model_validate(raw)
        if not any(config.attribute in c.features for c in request.candidates):
            continue
        aspects[name] = config
    return WalkPlan(
        aspects=aspects,
        max_steps=request.options.max_steps or max_steps,
        deadline_ms=request.options.deadline_ms or deadline_ms,
    )


def offered_after(plan: WalkPlan, pool_size: int) -> tuple[str, ...]:
    """Next nodes on offer: every enabled aspect; Backward and Stop only once a list exists."""
    functional = (BACKWARD, STOP) if pool_size > 0 else ()
    return (*plan.aspect_names, *functional)
