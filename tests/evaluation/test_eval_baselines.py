"""Baselines: permutations, the greedy DPP against brute force, and each moving the metric it targets;
the heuristic walk's Goal variants moving the metric they name."""

import numpy as np
import pytest

from worker.config import Settings
from worker.evaluation.baselines import BASELINES, _greedy_map, dpp, fair, mmr, upstream
from worker.evaluation.candidates import build_cases, leave_one_out, pick_users
from worker.evaluation.datasets import synthetic
from worker.evaluation.gmf import GMFConfig, train_gmf
from worker.evaluation.report import table2
from worker.evaluation.runner import BaselineMethod, ResultCache, WalkMethod, run_all
from worker.schemas import RerankRequest
from worker.service import Reranker

KS = (10, 20)


@pytest.fixture(scope="module")
def cases():
    data = synthetic(200, 300, seed=5)
    split = leave_one_out(data)
    model = train_gmf(
        split.train_user,
        split.train_item,
        data.interactions.n_users,
        data.interactions.n_items,
        GMFConfig(seed=5),
    )
    return build_cases(data, split, model, pick_users(split, 60, seed=5))


def _request(genres, years, scores=None):
    n = len(genres)
    return RerankRequest(
        request_id="r",
        goal="Focus on diversity",
        user={"user_id": "u"},
        candidates=[
            {
                "item_id": f"i{i}",
                "score": (scores or [1 - i / n for i in range(n)])[i],
                "features": {"genre": genres[i], "year": years[i]},
            }
            for i in range(n)
        ],
        aspects={"diversity": {"attribute": "genre"}, "fairness": {"attribute": "year", "split_at": 1996}},
    )


def test_every_baseline_returns_a_permutation(cases):
    for case in cases[:20]:
        ids = [c.item_id for c in case.request.candidates]
        for fn in BASELINES.values():
            out = fn(case.request)
            assert sorted(out) == sorted(ids)


def test_upstream_keeps_the_order_and_mmr_spreads_genres_by_hand():
    request = _request([["A"], ["A"], ["B"], ["A"], ["C"]], [1990] * 5)
    assert upstream(request) == ["i0", "i1", "i2", "i3", "i4"]
    # lam 0.5: i0 first; then i1 scores 0.5*0.75 - 0.5*1 < i2's 0.5*0.5 - 0; then i4 (new genre C)
    assert mmr(request)[:3] == ["i0", "i2", "i4"]


def test_fast_greedy_map_matches_brute_force_log_det():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.normal(size=(12, 6))
        kernel = x @ x.T + 1e-3 * np.eye(12)
        picked = _greedy_map(kernel, 6, 1e-10)
        chosen: list[int] = []
        for _step in range(len(picked)):
            gains = [
                np.linalg.slogdet(kernel[np.ix_([*chosen, j], [*chosen, j])])[1]
                if j not in chosen
                else -np.inf
                for j in range(12)
            ]
            chosen.append(int(np.argmax(gains)))
        assert picked == chosen


def test_dpp_puts_one_item_per_genre_direction_first():
    request = _request([["A"], ["A"], ["B"], ["A", "B"], ["C"]], [1990] * 5)
    out = dpp(request)
    assert out[0] == "i0"
    assert set(out[:3]) == {"i0", "i2", "i4"}  # A, B, C; the A-duplicate and the A|B mix come later


def test_fair_keeps_each_group_at_its_share_of_every_prefix():
    years = [2000, 2000, 2000, 2000, 1980, 1980, 2000, 1980]
    out = fair(_request([["A"]] * 8, years))
    group = {f"i{i}": y >= 1996 for i, y in enumerate(years)}
    for t in range(1, 9):
        old = sum(not group[i] for i in out[:t])
        assert old >= (t * 3) // 8
    assert out[:3] == ["i0", "i1", "i4"]  # at t = 3 the old group (3 of 8) needs one item


def _means(rows, method, goal):
    return next(r for r in rows if r["method"] == method and r["goal"] == goal)


async def test_baselines_move_the_metric_they_target(cases, tmp_path):
    methods = [BaselineMethod(name, fn) for name, fn in BASELINES.items()]
    records, ran = await run_all(methods, cases, ["A"], ResultCache(tmp_path / "c.jsonl"), progress=False)
    assert ran == len(BASELINES) * len(cases)
    rows = table2(records, {c.request.request_id: c for c in cases}, KS)
    up = _means(rows, "upstream", "-")
    assert _means(rows, "mmr", "-")["alpha-NDCG@10"] > up["alpha-NDCG@10"] + 0.02
    assert _means(rows, "dpp", "-")["alpha-NDCG@10"] > up["alpha-NDCG@10"] + 0.02
    assert _means(rows, "fair", "-")["MAD"] < 0.7 * up["MAD"]


async def test_heuristic_goal_variants_move_the_metric_they_name(cases, tmp_path):
    walk = WalkMethod("heuristic", Reranker(Settings(_env_file=None), None, policy="heuristic"))
    records, _ = await run_all(
        [walk], cases, ["A", "D", "F"], ResultCache(tmp_path / "c.jsonl"), progress=False
    )
    rows = table2(records, {c.request.request_id: c for c in cases}, KS)
    a, d, f = (_means(rows, "heuristic", g) for g in ("A", "D", "F"))
    assert a["n"] == d["n"] == f["n"] == len(cases)
    # Goal D raises alpha-NDCG over Goal A; Goal F lowers MAD
    assert d["alpha-NDCG@10"] > a["alpha-NDCG@10"] + 0.03
    assert f["MAD"] < 0.5 * a["MAD"]
    # Goal A's walk is the accuracy node alone: the upstream GMF order
    assert all(r.path == ["accuracy", "stop"] for r in records if r.goal == "A")
    assert {tuple(r.path) for r in records if r.goal == "D"} == {("accuracy", "diversity", "stop")}
