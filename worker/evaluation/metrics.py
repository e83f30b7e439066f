"""The paper's metrics, one small function each. Rankings are lists of item ids, best first."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence


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


def _novelty_gain(item_categories: set[str], seen: Counter[str], alpha: float) -> float:
    return sum((1.0 - alpha) ** seen[c] for c in item_categories)


def alpha_ndcg(ranking: Sequence[str], categories: Mapping[str, Sequence[str]], k: int,
               alpha: float = 0.5) -> float:
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


def position_scores(n: int, k: int | None = None) -> list[float]:
    """The paper's position mapping: rank 1 scores 1, rank k scores 0, linearly; ranks after k
    score 0 (k defaults to the list length n, the paper's full-list mapping)."""
    k = min(k or n, n)
    if k <= 1:
        return [1.0] + [0.0] * (n - 1)
    return [1.0 - r / (k - 1) if r < k else 0.0 for r in range(n)]


def mad(ranking: Sequence[str], groups: Mapping[str, str | None], k: int | None = None) -> float:
    """MAD@k (the paper's fairness metric): map positions to scores with `position_scores(n, k)` and
    take the absolute difference between the two groups' mean scores (every candidate of a group
    counts, so a group pushed below k scores 0). With more than two groups, the largest minus the
    smallest group mean. NaN when fewer than two groups are present. Lower is fairer."""
    scores = position_scores(len(ranking), k)
    by_group: dict[str, list[float]] = {}
    for item, s in zip(ranking, scores, strict=True):
        g = groups.get(item)
        if g is not None:
            by_group.setdefault(g, []).append(s)
    if len(by_group) < 2:
        return math.nan
    means = [sum(v) / len(v) for v in by_group.values()]
    return max(means) - min(means)
