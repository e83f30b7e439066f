"""The heuristic policy: no LLM, the same node semantics, next nodes from the Goal's words."""

from __future__ import annotations

from ..engine import heuristics as h
from ..engine.nodes import ASPECT_NODES
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
    """One aspect node's heuristic list, starting from the latest pool entry; the node's registry
    entry names the reranker, so a new aspect needs no change here."""
    items = {c.item_id: c for c in ask.request.candidates}
    reranker = h.RERANKERS[ASPECT_NODES[ask.node].heuristic]
    return reranker(ask.previous, items, ask.plan.aspects.get(ask.node), ask.request)
