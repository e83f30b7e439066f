"""The paper's metrics for the evaluation. They are defined once, in `worker.engine.measures`, which
the walk's heuristics and the replay report use too; this module names them for the evaluation."""

from __future__ import annotations

from ..engine.measures import (
    alpha_ndcg,
    categories_of,
    group_of,
    hit_rate,
    item_categories,
    item_groups,
    mad,
    mad_top_k,
    ndcg,
    position_scores,
)

__all__ = [
    "alpha_ndcg",
    "categories_of",
    "group_of",
    "hit_rate",
    "item_categories",
    "item_groups",
    "mad",
    "mad_top_k",
    "ndcg",
    "position_scores",
]
