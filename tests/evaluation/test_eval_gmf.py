"""GMF, the leave-one-out split and the candidate requests built from them."""

import numpy as np
import pytest

from worker.evaluation.candidates import (
    GOALS,
    build_cases,
    candidate_items,
    leave_one_out,
    pick_users,
    with_goal,
)
from worker.evaluation.datasets import Dataset, Interactions, synthetic
from worker.evaluation.gmf import GMFConfig, hit_rate_full, train_gmf
from worker.schemas import parse_request


@pytest.fixture(scope="module")
def trained():
    data = synthetic(300, 300, seed=11)
    split = leave_one_out(data)
    model = train_gmf(
        split.train_user,
        split.train_item,
        data.interactions.n_users,
        data.interactions.n_items,
        GMFConfig(seed=11),
    )
    return data, split, model


def test_leave_one_out_holds_out_the_latest_interaction():
    inter = Interactions.from_columns(
        ["u1", "u1", "u1", "u2", "u3", "u3"],
        ["a", "b", "c", "a", "c", "b"],
        np.array([3.0, 9.0, 5.0, 1.0, 2.0, 2.0]),
    )
    data = Dataset("t", inter, {}, {}, {})
    split = leave_one_out(data)
    item = {name: i for i, name in enumerate(inter.item_ids)}
    user = {name: u for u, name in enumerate(inter.user_ids)}
    assert split.held_out[user["u1"]] == item["b"]
    assert list(split.history[user["u1"]]) == [item["a"], item["c"]]  # time order
    assert split.held_out[user["u2"]] == -1  # a single interaction: nothing to hold out
    assert split.held_out[user["u3"]] == item["b"]  # tie on time: the later row
    train = set(zip(split.train_user.tolist(), split.train_item.tolist(), strict=True))
    assert (user["u1"], item["b"]) not in train and (user["u2"], item["a"]) in train
    assert len(train) == 4  # u1: a, c; u2: a; u3: c


def test_gmf_beats_random_order_on_generated_data(trained):
    _data, split, model = trained
    assert model.losses[-1] < model.losses[0]
    users = split.eligible()
    gmf = hit_rate_full(model, split.seen, split.held_out, users, 10)
    chance = hit_rate_full(model, split.seen, split.held_out, users, 10, rng=np.random.default_rng(0))
    # about 10 / 290 by chance; GMF should be several times better
    assert chance < 0.08
    assert gmf > 3 * chance and gmf > 0.15


def test_gmf_learns_beyond_an_untrained_model(trained):
    data, split, model = trained
    untrained = train_gmf(
        split.train_user,
        split.train_item,
        data.interactions.n_users,
        data.interactions.n_items,
        GMFConfig(seed=11, epochs=0),
    )
    users = split.eligible()
    assert (
        hit_rate_full(model, split.seen, split.held_out, users, 10)
        > hit_rate_full(untrained, split.seen, split.held_out, users, 10) + 0.1
    )


def test_candidates_are_twenty_unseen_items_with_the_held_out_one(trained):
    _data, split, model = trained
    for u in split.eligible()[:30]:
        items, scores = candidate_items(model, split, int(u), 20)
        assert len(items) == 20 == len(set(items.tolist()))
        assert split.held_out[u] in items
        assert not set(items.tolist()) & set(split.seen[u].tolist())
        assert np.all(np.diff(scores) <= 0)  # best first
        # the other 19 are GMF's best unseen items
        full = model.scores(int(u))
        full[split.seen[u]] = -np.inf
        full[split.held_out[u]] = -np.inf
        assert set(items.tolist()) - {int(split.held_out[u])} == set(np.argsort(-full)[:19].tolist())


def test_cases_are_valid_contract_requests(trained):
    data, split, model = trained
    users = pick_users(split, 12, seed=1)
    assert len(users) == 12 and list(users) == sorted(users)
    cases = build_cases(data, split, model, users, max_steps=5)
    for case in cases:
        request = parse_request(case.request.model_dump_json(exclude_none=True))  # the wire round trip
        assert request == case.request
        assert [c.item_id for c in request.candidates].count(case.positive) == 1
        scores = [c.score for c in request.candidates]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert set(request.candidates[0].features) == {"title", "genre", "year"}
        assert len(request.user.history) == 10
        assert request.aspects["fairness"].split_at == 1996
        assert request.options.max_steps == 5
    goal = with_goal(cases[0].request, "D-F")
    assert goal.goal == GOALS["D-F"] and goal.request_id.endswith("/D-F")
