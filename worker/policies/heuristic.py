"""The heuristic policy: no LLM, the same node semantics, next nodes from the Goal's words."""

from __future__ import annotations

from ..engine import heuristics as h
from ..engine.nodes import ACCURACY, DIVERSITY, FAIRNESS, NOVELTY
from ..engine.prompts import history_values
from ..engine.steps import NodeAnswer, NodeAsk


class HeuristicPolicy:
    name = "heuristic"

    async def answer(self, ask: NodeAsk) -> NodeAnswer:
        return self.answer_now(ask)

    def answer_now(self, ask: NodeAsk) -> NodeAnswer:
        ranking = None if ask.node not in ask.plan.aspects else rerank(ask)
        visited = (*ask.visited, ask.node)
        next_node = h.next_by_goal(ask.request.goal, ask.plan.aspect_names, visited, ask.offered)
        return NodeAnswer(ranking, next_node, self.name)


def rerank(ask: NodeAsk) -> list[str]:
    """One aspect node's heuristic list, starting from the latest pool entry."""
    items = {c.item_id: c for c in ask.request.candidates}
    base = ask.previous
    aspect = ask.plan.aspects.get(ask.node)
    if ask.node == ACCURACY or aspect is None:
        return h.by_score(base, items)
    if ask.node == DIVERSITY:
        return h.diversify(base, items, aspect.attribute)
    if ask.node == FAIRNESS:
        return h.equalise_groups(base, items, aspect)
    if ask.node == NOVELTY:
        seen = history_values(ask.request, aspect.attribute)
        return h.prefer_novel(base, items, aspect.attribute, seen)
    return list(base)
