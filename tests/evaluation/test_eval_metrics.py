"""Metric definitions against hand-computed cases, and alpha-NDCG against ndeval (ir_measures)."""

import math
import random

import pytest

from worker.evaluation.metrics import alpha_ndcg, hit_rate, mad, mad_top_k, ndcg, position_scores


def test_hit_rate_counts_only_the_first_k_positions():
    ranking = ["a", "b", "c", "d"]
    assert hit_rate(ranking, "c", 3) == 1.0
    assert hit_rate(ranking, "c", 2) == 0.0
    assert hit_rate(ranking, "z", 4) == 0.0


def test_ndcg_of_one_relevant_item_is_the_rank_discount():
    ranking = ["a", "b", "c", "d"]
    assert ndcg(ranking, "a", 10) == 1.0
    assert ndcg(ranking, "b", 10) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg(ranking, "d", 3) == 0.0


def test_ndcg_rank_four_by_hand():
    # rank 4: 1 / log2(4 + 1) = 1 / 2.321928 = 0.430677
    assert ndcg(["a", "b", "c", "d"], "d", 4) == pytest.approx(0.430677, abs=1e-6)


def test_alpha_ndcg_by_hand():
    cats = {"a": ["x"], "b": ["x"], "c": ["y"]}
    # ranking a, b, c: gains 1, 0.5, 1 -> 1 + 0.5/log2(3) + 1/log2(4) = 1.815465
    # ideal (greedy) a|b, c, b|a: gains 1, 1, 0.5 -> 1 + 1/log2(3) + 0.5/2 = 1.880930
    assert alpha_ndcg(["a", "b", "c"], cats, 3) == pytest.approx(1.815465 / 1.880930, abs=1e-6)
    assert alpha_ndcg(["a", "c", "b"], cats, 3) == pytest.approx(1.0)
    # k = 1: any first item gains 1, the ideal too
    assert alpha_ndcg(["b", "a", "c"], cats, 1) == pytest.approx(1.0)
    # k = 2: a, b -> 1 + 0.5/log2(3) = 1.315465; ideal 1 + 1/log2(3) = 1.630930
    assert alpha_ndcg(["a", "b", "c"], cats, 2) == pytest.approx(1.315465 / 1.630930, abs=1e-6)


def test_alpha_ndcg_multi_category_items_and_items_without_categories():
    cats = {"a": ["x", "y"], "b": ["y"], "c": []}
    # ranking c, b, a: gains 0, 1, 1 + 0.5 -> 1/log2(3) + 1.5/2 = 1.380930
    # ideal a, b, c: gains 2, 0.5, 0 -> 2 + 0.5/log2(3) = 2.315465
    assert alpha_ndcg(["c", "b", "a"], cats, 3) == pytest.approx(1.380930 / 2.315465, abs=1e-6)
    assert alpha_ndcg(["c", "a", "b"], {"c": []}, 3) == 0.0


def _ndeval(ranking, cats, k):
    import ir_measures

    qrels = [ir_measures.Qrel("q", d, 1, c) for d, cs in cats.items() for c in cs]
    run = [ir_measures.ScoredDoc("q", d, float(len(ranking) - i)) for i, d in enumerate(ranking)]
    measure = ir_measures.alpha_nDCG(alpha=0.5, judged_only=False) @ k
    values = [m.value for m in ir_measures.iter_calc([measure], qrels, run)]
    return values[0]


def test_alpha_ndcg_matches_ndeval_on_random_lists():
    pytest.importorskip("pyndeval")
    rng = random.Random(7)
    checked = 0
    for _ in range(150):
        n = rng.randint(2, 20)
        cats = {
            f"m{i}": rng.sample(["Action", "Comedy", "Drama", "Horror", "War", "Sci-Fi"], rng.randint(0, 3))
            for i in range(n)
        }
        if not any(cats.values()):
            continue
        ranking = list(cats)
        rng.shuffle(ranking)
        k = rng.choice([1, 5, 10, 20])
        assert alpha_ndcg(ranking, cats, k) == pytest.approx(_ndeval(ranking, cats, k), abs=1e-5), (
            ranking,
            cats,
            k,
        )
        checked += 1
    assert checked > 100


def test_position_scores_map_linearly_from_one_to_zero():
    assert position_scores(5) == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert position_scores(1) == [1.0]


def test_mad_by_hand():
    groups = {"a": "old", "b": "old", "c": "new", "d": "new"}
    # scores 1, 2/3, 1/3, 0: old mean 5/6, new mean 1/6 -> 2/3
    assert mad(["a", "b", "c", "d"], groups) == pytest.approx(2 / 3)
    # interleaved a, c, b, d: old (1 + 1/3)/2 = 2/3, new (2/3 + 0)/2 = 1/3 -> 1/3
    assert mad(["a", "c", "b", "d"], groups) == pytest.approx(1 / 3)
    # a, c, d, b: old (1 + 0)/2, new (2/3 + 1/3)/2 -> 0
    assert mad(["a", "c", "d", "b"], groups) == pytest.approx(0.0)
    # the top-2 variant (not the paper's): scores 1, 0, 0, 0 -> old 1/2, new 0
    assert mad_top_k(["a", "c", "d", "b"], groups, 2) == pytest.approx(0.5)


def test_mad_of_one_group_is_zero_and_ungrouped_items_only_hold_positions():
    assert mad(["a", "b"], {"a": "g", "b": "g"}) == 0.0  # the paper's value: nothing to compare
    assert math.isnan(mad(["a", "b"], {"a": None, "b": None}))  # no item has a group
    assert mad(["a", "x", "b"], {"a": "g", "b": "h", "x": None}) == pytest.approx(1.0)
