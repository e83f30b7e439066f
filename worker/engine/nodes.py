"""The graph's nodes. A new aspect is a focus template in `prompts/<set>/nodes/` plus an entry here.

This registry is the one list of node names, short labels and colours: the parser, sim-llm,
`trace list` and the viewer (through the audit API's /api/nodes) all read it, at call time, so an
entry added here (or by a test) shows up everywhere."""

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
    `heuristics.RERANKERS` that the heuristic policy (and so sim-llm) applies at this node.
    `short` is its one-letter label in paths (default: the name's first letter, upper case) and
    `colour` its colour in the viewer."""

    name: str
    needs_attribute: bool
    goal_words: tuple[str, ...]
    heuristic: str
    short: str = ""
    colour: str = "#374151"

    @property
    def label(self) -> str:
        return self.short or self.name[:1].upper()


ASPECT_NODES: dict[str, AspectNode] = {
    n.name: n
    for n in (
        AspectNode(
            ACCURACY, False, ("accura", "relevan", "precis", "match", "interest"), "score", "A", "#2563eb"
        ),
        AspectNode(DIVERSITY, True, ("divers", "variety", "varied", "coverage"), "coverage", "D", "#16a34a"),
        AspectNode(
            FAIRNESS, True, ("fair", "equal", "balanced exposure", "unbiased"), "groups", "F", "#9333ea"
        ),
        AspectNode(
            NOVELTY, True, ("novel", "new to", "unfamiliar", "serendip", "fresh"), "unseen", "N", "#ea580c"
        ),
    )
}
FUNCTIONAL_STYLE: dict[str, tuple[str, str]] = {BACKWARD: ("B", "#6b7280"), STOP: ("S", "#111827")}
ALL_NODES = (*ASPECT_NODES, *FUNCTIONAL)  # the built-in nodes; node_names() includes later entries


def node_names() -> tuple[str, ...]:
    """Every node name, aspects first (in registry order), then Backward and Stop."""
    return (*ASPECT_NODES, *FUNCTIONAL)


def short_label(name: str) -> str:
    """A node's one-letter label in paths; `?` for a name the registry does not know."""
    if name in ASPECT_NODES:
        return ASPECT_NODES[name].label
    return FUNCTIONAL_STYLE[name][0] if name in FUNCTIONAL_STYLE else "?"


def node_styles() -> list[dict[str, str]]:
    """Name, kind, short label and colour of every node, as the viewer draws them."""
    out = [
        {"name": n.name, "kind": "aspect", "short": n.label, "colour": n.colour}
        for n in ASPECT_NODES.values()
    ]
    out += [
        {"name": name, "kind": "functional", "short": short, "colour": colour}
        for name, (short, colour) in FUNCTIONAL_STYLE.items()
    ]
    return out


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
