"""GMF at ML-1M scale on generated data (6,040 users x 3,706 items, about 1M interactions): it learns
(loss well under the base rate) and beats popularity on full-catalogue HR@10; a planted collapse fails
the run; ties are never hits; the candidate protocols and the random-order row behave as stated."""

import numpy as np
import pytest

from worker.evaluation import pipeline
from worker.evaluation.baselines import popularity, random_order, upstream
from worker.evaluation.candidates import build_cases, leave_one_out, pick_users
from worker.evaluation.datasets import synthetic
from worker.evaluation.gmf import (
    GMF,
    GMFCollapsed,
    GMFConfig,
    base_rate_loss,
    check_learned,
    hit_rate_full,
    popularity_counts,
    train_gmf,
)
from worker.evaluation.metrics import hit_rate
from worker.evaluation.report import positive_positions

# Trains GMF on about 1M interactions (tens of seconds of CPU): kept out of the fast lane.
pytestmark = pytest.mark.integration

ML1M_USERS, ML1M_ITEMS, ML1M_MEAN = 6040, 3706, 165  # ML-1M: 1,000,209 ratings, 165.6 per user


@pytest.fixture(scope="module")
def ml1m():
    data = synthetic(ML1M_USERS, ML1M_ITEMS, seed=1, mean_interactions=ML1M_MEAN)
    split = leave_one_out(data)
    inter = data.interactions
    model = train_gmf(
        split.train_user, split.train_item, inter.n_users, inter.n_items, GMFConfig(seed=1, batch_size=8192)
    )
    return data, split, model


@pytest.mark.timeout(900)
def test_gmf_learns_and_beats_popularity_at_ml1m_scale(ml1m):
    data, split, model = ml1m
    inter = data.interactions
    assert (inter.n_users, inter.n_items) == (ML1M_USERS, ML1M_ITEMS)
    assert 900_000 < len(inter) < 1_100_000
    assert base_rate_loss(4) == pytest.approx(0.5004, abs=1e-4)
    assert model.losses[-1] < 0.8 * base_rate_loss(4)
    users = pick_users(split, 3000, seed=1)
    gmf = hit_rate_full(model, split.seen, split.held_out, users, 10)
    pop = hit_rate_full(
        None,
        split.seen,
        split.held_out,
        users,
        10,
        popularity=popularity_counts(split.train_item, inter.n_items),
    )
    chance = hit_rate_full(model, split.seen, split.held_out, users, 10, rng=np.random.default_rng(1))
    assert chance < 0.01
    assert gmf > pop + 0.03, (gmf, pop)
    assert model.best_epoch >= 1 and len(model.validation_hr) == len(model.losses)


def test_random_order_of_the_candidates_hits_about_half_and_protocols_move_the_positive(ml1m):
    data, split, model = ml1m
    users = pick_users(split, 1500, seed=2)
    paper = build_cases(data, split, model, users)
    hr_random = np.mean([hit_rate(random_order(c.request), c.positive, 10) for c in paper])
    assert abs(hr_random - 0.5) < 0.05  # 10 of 20 positions, whatever the protocol
    # the paper's protocol puts the held-out item last whenever GMF does not retrieve it
    positions = positive_positions(paper)
    retrieved_share = hit_rate_full(model, split.seen, split.held_out, users, 20)
    assert positions[-1]["share"] >= 1 - retrieved_share - 1e-9
    assert positions[-1]["share"] > 0.3
    # random-position: the same candidate sets, the positive anywhere, scores still in list order
    moved = build_cases(data, split, model, users, protocol="random-position", seed=2)
    assert [set(c.item_id for c in a.request.candidates) for a in paper] == [
        set(c.item_id for c in b.request.candidates) for b in moved
    ]
    shares = np.array([p["share"] for p in positive_positions(moved)])
    assert shares.max() < 0.1 and shares.min() > 0.01
    for case in moved[:50]:
        scores = [c.score for c in case.request.candidates]
        assert scores == sorted(scores, reverse=True)
    # retrieved: only users GMF retrieves, so GMF's own HR@20 is 1 and nothing is placed last
    kept = build_cases(data, split, model, users, protocol="retrieved")
    assert len(kept) == pytest.approx(retrieved_share * len(users), abs=0.5)
    assert all(hit_rate(upstream(c.request), c.positive, 20) == 1.0 for c in kept)
    # popularity among the candidates uses training counts only
    counts = popularity_counts(split.train_item, data.interactions.n_items)
    by_id = {data.interactions.item_ids[i]: counts[i] for i in range(len(counts))}
    ranked = popularity(by_id)(paper[0].request)
    assert [by_id[i] for i in ranked] == sorted((by_id[i] for i in ranked), reverse=True)


def test_ties_are_never_hits():
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 40
    tied = GMF(np.zeros((n_users, 4)), np.zeros((n_items, 4)), np.ones(4), 0.3, [0.5])
    seen = [np.array([0, 1]) for _ in range(n_users)]
    held_out = rng.integers(2, n_items, size=n_users)
    users = np.arange(n_users)
    # every unseen item scores the same: the held-out one ranks last among 38, never in the top 10
    assert hit_rate_full(tied, seen, held_out, users, 10) == 0.0
    assert hit_rate_full(tied, seen, held_out, users, 38) == 1.0
    # a popularity ranking where every item is equally popular: no hits either
    assert hit_rate_full(None, seen, held_out, users, 10, popularity=np.ones(n_items)) == 0.0


def test_a_planted_collapse_fails_the_training_loudly():
    data = synthetic(300, 300, seed=4)
    split = leave_one_out(data)
    inter = data.interactions
    # the old bug, planted: an L2 pull so strong that every embedding goes to zero
    with pytest.raises(GMFCollapsed, match="collapsed") as caught:
        train_gmf(
            split.train_user,
            split.train_item,
            inter.n_users,
            inter.n_items,
            GMFConfig(seed=4, l2=1e4, epochs=4, patience=10),
        )
    assert "base-rate loss 0.5004" in str(caught.value)
    # without the guard the same model exists: its loss is the base rate's, it learned nothing
    model = train_gmf(
        split.train_user,
        split.train_item,
        inter.n_users,
        inter.n_items,
        GMFConfig(seed=4, l2=1e4, epochs=4, patience=10, guard=False),
    )
    assert model.losses[-1] > 0.95 * base_rate_loss(4)
    # each symptom alone is enough: scores tied for every user (even with a low loss) ...
    tied = GMF(np.zeros((30, 8)), np.zeros((40, 8)), np.ones(8), -1.4, [0.2], base_rate_loss=0.5004)
    with pytest.raises(GMFCollapsed, match="same score for 30 of 30 users"):
        check_learned(tied, np.arange(30))
    # ... or a loss at the base rate (even with scores that differ)
    rng = np.random.default_rng(0)
    flat = GMF(
        rng.normal(size=(30, 8)), rng.normal(size=(40, 8)), np.ones(8), 0.0, [0.5004], base_rate_loss=0.5004
    )
    with pytest.raises(GMFCollapsed, match=r"training loss 0\.5004 is at the base-rate loss"):
        check_learned(flat, np.arange(30))
    check_learned(GMF(flat.users, flat.items, flat.h, 0.0, [0.30], base_rate_loss=0.5004), np.arange(30))


def test_a_collapsed_gmf_stops_the_eval_command_with_a_clear_message(monkeypatch):
    real = GMFConfig
    monkeypatch.setattr(
        "worker.evaluation.gmf.GMFConfig", lambda **kwargs: real(**kwargs, l2=1e4, epochs=3, patience=10)
    )  # planted
    setup = {
        "version": pipeline.CASES_VERSION,
        "dataset": "synthetic",
        "data_dir": None,
        "users": 20,
        "seed": 0,
        "items": 200,
        "columns": None,
        "split_at": None,
        "candidates": 20,
        "max_steps": 5,
        "protocol": "paper",
    }
    with pytest.raises(pipeline.SetupError, match="GMF collapsed and did not learn"):
        pipeline._build(setup)
