"""One definition of each metric and of group membership (worker.engine.measures), checked per
request against independent implementations (ir_measures for HR, NDCG and alpha-nDCG, numpy for
MAD), and shared by the walk's heuristics, the evaluation and the replay report."""

import ast
from pathlib import Path

import ir_measures
import numpy as np
import pytest
from cases import cases
from hypothesis import HealthCheck, given
from hypothesis import strategies as st

from worker.engine import heuristics, measures, prompts
from worker.evaluation.baselines import random_order
from worker.evaluation.candidates import Case, build_cases, leave_one_out, pick_users
from worker.evaluation.datasets import synthetic
from worker.evaluation.gmf import GMFConfig, train_gmf
from worker.evaluation.report import case_metrics
from worker.evaluation.runner import Record
from worker.replay.report import session_metrics
from worker.schemas import AspectConfig, Item, RerankRequest

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ["Action", "Comedy", "Drama", "Horror", "War"]


def _ir(measure, ranking, qrels):
    run = [ir_measures.ScoredDoc("q", d, float(len(ranking) - i)) for i, d in enumerate(ranking)]
    return next(iter(ir_measures.iter_calc([measure], qrels, run))).value


def _mad_numpy(ranking, groups):
    """The paper's MAD, written independently: linspace scores, two (or more) group means."""
    scores = np.linspace(1.0, 0.0, len(ranking)) if len(ranking) > 1 else np.ones(1)
    labels = np.array([groups.get(i) for i in ranking], dtype=object)
    present = sorted({g for g in labels if g is not None})
    if not present:
        return float("nan")
    means = [scores[labels == g].mean() for g in present]
    return float(max(means) - min(means))


feature_values = st.one_of(
    st.none(),
    st.integers(1960, 2005),
    st.floats(1960, 2005, allow_nan=False),
    st.integers(1960, 2005).map(str),
    st.lists(st.integers(1960, 2005), max_size=2),
    st.sampled_from(["", "n/a", "1996", "1995.5"]),
)


@st.composite
def requests(draw):
    n = draw(st.integers(2, 20))
    ids = [f"m{i}" for i in range(n)]
    order = draw(st.permutations(ids))
    candidates = [
        Item(
            item_id=i,
            score=1 - j / n,
            features={
                "genre": draw(st.lists(st.sampled_from(CATEGORIES), max_size=3, unique=True)),
                "year": draw(feature_values),
            },
        )
        for j, i in enumerate(ids)
    ]
    split_at = draw(st.sampled_from([1996.0, None]))
    request = RerankRequest(
        request_id="r",
        goal="Consider accuracy, diversity and fairness",
        user={"user_id": "u"},
        candidates=candidates,
        aspects={
            "diversity": {"attribute": "genre"},
            "fairness": {"attribute": "year", "split_at": split_at},
        },
    )
    return request, list(order), draw(st.sampled_from(ids)), draw(st.sampled_from([1, 5, 10, 20]))


@cases(80, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_every_metric_matches_an_independent_implementation_per_request(case):
    request, ranking, positive, k = case
    features = {c.item_id: c.features for c in request.candidates}
    qrels = [ir_measures.Qrel("q", positive, 1)]
    assert measures.hit_rate(ranking, positive, k) == _ir(ir_measures.Success @ k, ranking, qrels)
    assert measures.ndcg(ranking, positive, k) == pytest.approx(_ir(ir_measures.nDCG @ k, ranking, qrels))
    cats = measures.item_categories(features, "genre")
    if any(cats.values()):
        sub = [ir_measures.Qrel("q", d, 1, c) for d, cs in cats.items() for c in cs]
        expected = _ir(ir_measures.alpha_nDCG(alpha=0.5, judged_only=False) @ k, ranking, sub)
        assert measures.alpha_ndcg(ranking, cats, k) == pytest.approx(expected, abs=1e-5)
    groups = measures.item_groups(features, request.aspects["fairness"])
    np.testing.assert_allclose(measures.mad(ranking, groups), _mad_numpy(ranking, groups), atol=1e-12)


@cases(80)
@given(requests())
def test_the_replay_report_and_the_evaluation_give_the_same_metrics(case):
    request, ranking, positive, _k = case
    record = Record("llm", "ADF", request.request_id, ranking)
    evaluated = case_metrics(record, Case(request, positive), [10])
    wire = request.model_dump(mode="json", exclude_none=True)  # the replay report reads stored JSON
    replayed = session_metrics(wire, ranking, [positive])
    assert replayed["hr@10"] == evaluated["HR@10"] and replayed["ndcg@10"] == evaluated["NDCG@10"]
    if "alpha_ndcg@10" in replayed:
        assert replayed["alpha_ndcg@10"] == evaluated["alpha-NDCG@10"]
    if np.isnan(evaluated["MAD"]):
        assert "mad" not in replayed
    else:
        assert replayed["mad"] == evaluated["MAD"]


@cases(200)
@given(feature_values, st.sampled_from([1996.0, None]))
def test_one_group_membership_for_the_walk_the_evaluation_and_the_report(value, split_at):
    aspect = AspectConfig(attribute="year", split_at=split_at)
    item = Item(item_id="x", features={"year": value})
    expected = measures.group_of(value, aspect)
    assert prompts.group_of is measures.group_of
    assert heuristics.fairness_group(item, aspect) == (expected or "(none)")
    assert measures.item_groups({"x": item.features}, {"attribute": "year", "split_at": split_at}) == {
        "x": expected
    }
    if split_at is not None and expected is not None:  # numbers, numeric text and lists agree
        number = float(value[0] if isinstance(value, list) else value)
        assert expected == measures.group_of(number, aspect) == measures.group_of([str(number)], aspect)


def test_group_of_by_hand():
    split = AspectConfig(attribute="year", split_at=1996)
    assert (
        measures.group_of(1996, split)
        == measures.group_of("1996", split)
        == measures.group_of([1996, 1980], split)
        == "year>=1996"
    )
    assert measures.group_of("1995.9", split) == "year<1996"
    assert measures.group_of("unknown", split) is None and measures.group_of([], split) is None
    plain = AspectConfig(attribute="language")
    assert measures.group_of(["en", "fr"], plain) == "en" and measures.group_of([], plain) is None


def test_mad_is_the_papers_over_the_whole_list_and_the_top_k_variant_is_separate():
    ranking = [f"i{j}" for j in range(20)]
    # group a holds the first five and the last five; b the middle: over the whole list they tie
    groups = {i: ("a" if j < 5 or j >= 15 else "b") for j, i in enumerate(ranking)}
    assert measures.mad(ranking, groups) == pytest.approx(0.0, abs=1e-12)
    # a top-10 variant only sees a's first five and b's first five: a very different number
    top_a = [1 - j / 9 for j in range(5)] + [0] * 5
    top_b = [1 - j / 9 for j in range(5, 10)] + [0] * 5
    assert measures.mad_top_k(ranking, groups, 10) == pytest.approx(np.mean(top_a) - np.mean(top_b))
    assert measures.mad(ranking, dict.fromkeys(ranking, "a")) == 0.0  # one group: the paper's 0


def test_the_engine_imports_neither_the_evaluation_nor_the_audit():
    for path in (ROOT / "worker" / "engine").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                assert not any(name in module for name in ("evaluation", "audit", "replay")), (path, module)
    measures_py = ROOT / "worker" / "engine" / "measures.py"
    defined = {"mad", "mad_top_k", "group_of", "item_groups", "categories_of", "item_categories"}
    for path in (ROOT / "worker").rglob("*.py"):
        if path == measures_py:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.name not in defined, (path, node.name)  # no second definition anywhere


@pytest.fixture(scope="module")
def cases():
    data = synthetic(200, 300, seed=8)
    split = leave_one_out(data)
    model = train_gmf(
        split.train_user,
        split.train_item,
        data.interactions.n_users,
        data.interactions.n_items,
        GMFConfig(seed=8),
    )
    return build_cases(data, split, model, pick_users(split, 40, seed=8))


def test_evaluation_rows_match_independent_implementations_on_generated_requests(cases):
    for case in cases:
        ranking = random_order(case.request)
        got = case_metrics(Record("random", "-", case.request.request_id, ranking), case, [10, 20])
        features = {c.item_id: c.features for c in case.request.candidates}
        qrels = [ir_measures.Qrel("q", case.positive, 1)]
        sub = [ir_measures.Qrel("q", d, 1, g) for d, f in features.items() for g in f["genre"]]
        for k in (10, 20):
            assert got[f"HR@{k}"] == _ir(ir_measures.Success @ k, ranking, qrels)
            assert got[f"NDCG@{k}"] == pytest.approx(_ir(ir_measures.nDCG @ k, ranking, qrels))
            assert got[f"alpha-NDCG@{k}"] == pytest.approx(
                _ir(ir_measures.alpha_nDCG(alpha=0.5, judged_only=False) @ k, ranking, sub), abs=1e-5
            )
        years = {i: ("new" if f["year"] >= 1996 else "old") for i, f in features.items()}
        assert got["MAD"] == pytest.approx(_mad_numpy(ranking, years), abs=1e-12)
