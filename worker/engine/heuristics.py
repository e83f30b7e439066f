"""The heuristic policy's rerankers (no LLM): the degraded-mode fallback and sim-llm's brain.

Each takes the list to start from (`base`, best first) and returns a permutation of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ..schemas import AspectConfig, Item, RerankRequest
from .measures import categories_of, group_of
from .nodes import ACCURACY, ASPECT_NODES, BACKWARD, STOP
from .prompts import history_values

MMR_LAMBDA = 0.5


def by_score(base: Sequence[str], items: dict[str, Item]) -> list[str]:
    """Accuracy: the upstream score, best first; ties (and missing scores) keep the base order."""
    position = {item: i for i, item in enumerate(base)}

    def key(i: str) -> tuple[float, int]:
        score = items[i].score
        return -(score if score is not None else float("-inf")), position[i]

    return sorted(base, key=key)


def values_of(item: Item, attribute: str) -> set[str]:
    return categories_of(item.features.get(attribute))


def diversify(
    base: Sequence[str], items: dict[str, Item], attribute: str, lam: float = MMR_LAMBDA
) -> list[str]:
    """Diversity: greedy MMR trading base-order relevance against categories not yet shown."""
    n = len(base)
    relevance = {item: 1.0 - i / n for i, item in enumerate(base)}
    shown: set[str] = set()
    left = list(base)
    out: list[str] = []
    while left:
        best = max(
            left,
            key=lambda item: (
                lam * relevance[item] + (1 - lam) * _new_share(values_of(items[item], attribute), shown)
            ),
        )
        left.remove(best)
        out.append(best)
        shown |= values_of(items[best], attribute)
    return out


def _new_share(values: set[str], shown: set[str]) -> float:
    return len(values - shown) / len(values) if values else 0.0


def fairness_group(item: Item, aspect: AspectConfig) -> str:
    return group_of(item.features.get(aspect.attribute), aspect) or "(none)"


def equalise_groups(base: Sequence[str], items: dict[str, Item], aspect: AspectConfig) -> list[str]:
    """Fairness: interleave groups so their mean positions meet, base order kept inside each."""
    groups: dict[str, list[str]] = {}
    for item in base:
        groups.setdefault(fairness_group(items[item], aspect), []).append(item)
    size = {g: len(members) for g, members in groups.items()}
    taken = dict.fromkeys(groups, 0)
    out: list[str] = []
    order = list(groups)
    for _ in range(len(base)):
        # the group furthest behind its fair share of positions so far goes next
        group = min(
            (g for g in order if taken[g] < size[g]),
            key=lambda g: ((taken[g] + 0.5) / size[g], base.index(groups[g][taken[g]])),
        )
        out.append(groups[group][taken[group]])
        taken[group] += 1
    return out


def prefer_novel(base: Sequence[str], items: dict[str, Item], attribute: str, seen: set[str]) -> list[str]:
    """Novelty: items with no attribute value from the user's history first, base order kept."""
    novel = [i for i in base if not (values_of(items[i], attribute) & seen)]
    familiar = [i for i in base if i not in set(novel)]
    return novel + familiar


def goal_order(goal: str, enabled: Sequence[str]) -> list[str]:
    """The aspect nodes a Goal sentence names, in the order it names them."""
    text = goal.casefold()
    found: list[tuple[int, str]] = []
    for name in enabled:
        hits = [m.start() for w in ASPECT_NODES[name].goal_words for m in re.finditer(re.escape(w), text)]
        if hits:
            found.append((min(hits), name))
    return [name for _, name in sorted(found)]


def next_by_goal(goal: str, enabled: Sequence[str], visited: Sequence[str], offered: Sequence[str]) -> str:
    """Visit the Goal's aspects in the Goal's order, then stop (accuracy alone for no aspect word)."""
    wanted = goal_order(goal, enabled) or [ACCURACY]
    done = set(visited)
    for name in wanted:
        if name not in done and name in offered:
            return name
    if STOP in offered:
        return STOP
    return next((n for n in offered if n != BACKWARD), offered[0])


Reranker = Callable[[Sequence[str], dict[str, Item], AspectConfig | None, RerankRequest], list[str]]


def _needs(aspect: AspectConfig | None) -> AspectConfig:
    if aspect is None:
        raise ValueError("this reranker needs an aspect attribute")
    return aspect


# what an aspect node's registry entry (nodes.AspectNode.heuristic) may name
RERANKERS: dict[str, Reranker] = {
    "score": lambda base, items, aspect, request: by_score(base, items),
    "coverage": lambda base, items, aspect, request: diversify(base, items, _needs(aspect).attribute),
    "groups": lambda base, items, aspect, request: equalise_groups(base, items, _needs(aspect)),
    "unseen": lambda base, items, aspect, request: prefer_novel(
        base, items, _needs(aspect).attribute, history_values(request, _needs(aspect).attribute)
    ),
    "keep": lambda base, items, aspect, request: list(base),
}
