"""What each aspect means, in one place: an item's categories (diversity), its fairness group, and the
paper's metrics (HR, NDCG, alpha-NDCG, MAD). The walk's heuristics, the evaluation and the replay
report all use these definitions, so a list is judged the same way everywhere.

Rankings are lists of item ids, best first, without ties.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..schemas import AspectConfig

# ---------------------------------------------------------------- membership


def categories_of(value: Any) -> set[str]:
    """The categories of one feature value: each element of a list, or the value itself."""
    return {str(v) for v in (value if isinstance(value, list) else [value]) if v is not None}


def group_of(value: Any, aspect: AspectConfig) -> str | None:
    """The fairness group of one feature value: with split_at, two numeric groups (a list counts by
    its first element; numeric text counts as its number); else the value (a list's first element).
    None when the value has no group (missing, empty, or not a number where one is needed)."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if aspect.split_at is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if math.isnan(number):
            return None
        return (
            f"{aspect.attribute}>={aspect.split_at:g}"
            if number >= aspect.split_at
            else (f"{aspect.attribute}<{aspect.split_at:g}")
        )
    return str(value)


def item_categories(features: Mapping[str, Mapping[str, Any]], attribute: str) -> dict[str, list[str]]:
    """Each item's categories (sorted) from its features."""
    return {item: sorted(categories_of(f.get(attribute))) for item, f in features.items()}


def item_groups(
    features: Mapping[str, Mapping[str, Any]], aspect: AspectConfig | Mapping[str, Any]
) -> dict[str, str | None]:
    """Each item's fairness group from its features."""
    config = aspect if isinstance(aspect, AspectConfig) else AspectConfig.model_validate(dict(aspect))
    return {item: group_of(f.get(config.attribute), config) for item, f in features.items()}


# ---------------------------------------------------------------- accuracy


def hit_rate(ranking: Sequence[str], positive: str, k: int) -> float:
    """HR@k: 1 if the held-out item is among the first k positions, else 0."""
    return 1.0 if positive in ranking[:k] else 0.0


def ndcg(ranking: Sequence[str], positive: str, k: int) -> float:
    """NDCG@k with one relevant item: 1 / log2(rank + 1) if its 1-based rank <= k, else 0
    (the ideal DCG is 1, the item at rank 1)."""
    top = list(ranking[:k])
    if positive not in top:
        return 0.0
    return 1.0 / math.log2(top.index(positive) + 2)


# ---------------------------------------------------------------- diversity


def _novelty_gain(item_categories: set[str], seen: Counter[str], alpha: float) -> float:
    return sum((1.0 - alpha) ** seen[c] for c in item_categories)


def alpha_ndcg(
    ranking: Sequence[str], categories: Mapping[str, Sequence[str]], k: int, alpha: float = 0.5
) -> float:
    """alpha-NDCG@k (Clarke et al. 2008) with the items' categories as subtopics and every candidate
    relevant to each of its categories: an item at 1-based rank r gains
    sum over its categories c of (1 - alpha)^(items ranked above it that have c), discounted by
    log2(r + 1), divided by the same sum for the ideal list. The ideal list is built greedily from all
    candidates (the largest gain next; ties go to the larger item id, as in ndeval), so it does not
    depend on the ranking being scored. 0 when no item has a category."""
    cats = {item: set(categories.get(item, ())) for item in ranking}
    seen: Counter[str] = Counter()
    dcg = 0.0
    for r, item in enumerate(ranking[:k]):
        dcg += _novelty_gain(cats[item], seen, alpha) / math.log2(r + 2)
        seen.update(cats[item])
    left = set(ranking)
    seen = Counter()
    ideal = 0.0
    for r in range(min(k, len(left))):
        item = max(left, key=lambda i: (_novelty_gain(cats[i], seen, alpha), i))
        left.remove(item)
        ideal += _novelty_gain(cats[item], seen, alpha) / math.log2(r + 2)
        seen.update(cats[item])
    return dcg / ideal if ideal > 0 else 0.0


# ---------------------------------------------------------------- fairness


def position_scores(n: int) -> list[float]:
    """The paper's position mapping over the whole list: rank 1 scores 1, rank n scores 0, linearly."""
    if n <= 1:
        return [1.0] * n
    return [1.0 - r / (n - 1) for r in range(n)]


def _group_gap(ranking: Sequence[str], groups: Mapping[str, str | None], scores: Sequence[float]) -> float:
    by_group: dict[str, list[float]] = {}
    for item, s in zip(ranking, scores, strict=True):
        g = groups.get(item)
        if g is not None:
            by_group.setdefault(g, []).append(s)
    if not by_group:
        return math.nan  # no item has a group: the metric does not apply
    if len(by_group) == 1:
        return 0.0  # one group: nothing to be unfair between (the paper's value)
    means = [sum(v) / len(v) for v in by_group.values()]
    return max(means) - min(means)


def mad(ranking: Sequence[str], groups: Mapping[str, str | None]) -> float:
    """MAD, the paper's fairness metric: positions map linearly to scores from 1 (top) to 0 (bottom)
    over the whole list, and MAD = |mean score of group 0 - mean score of group 1| (with more than
    two groups, the largest minus the smallest mean). Items without a group hold their position but
    belong to no group. 0 for a list with a single group, NaN when no item has a group. Lower is
    fairer."""
    return _group_gap(ranking, groups, position_scores(len(ranking)))


def mad_top_k(ranking: Sequence[str], groups: Mapping[str, str | None], k: int) -> float:
    """A top-k variant of MAD (not the paper's): rank 1 scores 1, rank k scores 0 and ranks after k
    score 0, so it weighs only who reaches the top k."""
    n = len(ranking)
    k = min(k, n)
    scores = [1.0] + [0.0] * (n - 1) if k <= 1 else [1.0 - r / (k - 1) if r < k else 0.0 for r in range(n)]
    return _group_gap(ranking, groups, scores)
