"""The paper's candidate generation: leave-one-out split, GMF, 20 candidates per user that include
the held-out item, turned into rerank requests in the contract's format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..schemas import HistoryItem, Item, Options, RerankRequest, User
from .datasets import Dataset
from .gmf import GMF
from .protocols import DEFAULT_PROTOCOL, GOALS, PROTOCOLS


@dataclass
class Split:
    """Leave-one-out: each user's latest interaction is held out (-1 for users with fewer than 2)."""

    train_user: np.ndarray
    train_item: np.ndarray
    held_out: np.ndarray
    seen: list[np.ndarray]
    history: list[np.ndarray]

    def eligible(self) -> np.ndarray:
        return np.flatnonzero(self.held_out >= 0)


def leave_one_out(dataset: Dataset) -> Split:
    """Hold out every user's last interaction by time (ties: the later row); the rest is training,
    kept in time order as the user's history."""
    inter = dataset.interactions
    order = np.lexsort((np.arange(len(inter)), inter.time, inter.user))
    users, items = inter.user[order], inter.item[order]
    starts = np.searchsorted(users, np.arange(inter.n_users + 1))
    held_out = np.full(inter.n_users, -1, dtype=np.int64)
    train = np.ones(len(order), dtype=bool)
    history: list[np.ndarray] = []
    for u in range(inter.n_users):
        lo, hi = starts[u], starts[u + 1]
        if hi - lo >= 2:
            held_out[u] = items[hi - 1]
            train[hi - 1] = False
            history.append(items[lo : hi - 1])
        else:
            history.append(items[lo:hi])
    seen = [np.unique(h) for h in history]
    return Split(users[train], items[train], held_out, seen, history)


def pick_users(split: Split, n: int, seed: int) -> np.ndarray:
    """`n` evaluation users (seeded), sorted; all eligible users when n is 0 or larger."""
    eligible = split.eligible()
    if n <= 0 or n >= len(eligible):
        return eligible
    return np.sort(np.random.default_rng(seed).choice(eligible, size=n, replace=False))


@dataclass
class Case:
    """One user's rerank request and the held-out item the metrics look for."""

    request: RerankRequest
    positive: str

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.model_dump(mode="json", exclude_none=True), "positive": self.positive}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Case:
        return cls(RerankRequest.model_validate(obj["request"]), obj["positive"])


def candidate_items(model: GMF, split: Split, user: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The held-out item plus GMF's n-1 best unseen items, best score first.

    The held-out item is always included (the paper's protocol), so when GMF ranks it below its
    top n-1 it sits last; the upstream HR@k is then GMF's own hit rate among all unseen items.
    An item tied with the held-out one goes before it (ties never favour the positive)."""
    scores = model.scores(user).astype(np.float64, copy=True)
    scores[split.seen[user]] = -np.inf
    positive = int(split.held_out[user])
    masked = scores.copy()
    masked[positive] = -np.inf
    k = min(n - 1, int(np.isfinite(masked).sum()))
    top = np.argpartition(-masked, k)[:k] if k < len(masked) else np.arange(len(masked))
    chosen = np.concatenate([top, [positive]])
    chosen_scores = scores[chosen]
    order = np.lexsort((chosen, chosen == positive, -chosen_scores))
    return chosen[order], chosen_scores[order]


def retrieved(model: GMF, split: Split, user: int, n: int = 20) -> bool:
    """Whether GMF ranks the held-out item within its top n unseen items (ties counted against it)."""
    scores = model.scores(user).astype(np.float64, copy=True)
    scores[split.seen[user]] = -np.inf
    return int(np.sum(scores >= scores[int(split.held_out[user])])) <= n


def protocol_items(
    model: GMF, split: Split, user: int, n: int, protocol: str, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """The candidates (best first) and their GMF logits under `protocol` (see PROTOCOLS); None when
    the protocol leaves this user out."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown candidate protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if protocol == "retrieved" and not retrieved(model, split, user, n):
        return None
    chosen, scores = candidate_items(model, split, user, n)
    if protocol == "random-position":
        positive = int(split.held_out[user])
        others = chosen[chosen != positive]
        at = int(np.random.default_rng([seed, user]).integers(0, len(chosen)))
        chosen = np.insert(others, at, positive)  # the scores stay in list order
    return chosen, scores


def _prob(logit: float) -> float:
    return round(float(1.0 / (1.0 + np.exp(-logit))), 4)


def build_cases(
    dataset: Dataset,
    split: Split,
    model: GMF,
    users: np.ndarray,
    *,
    n_candidates: int = 20,
    history: int = 10,
    max_steps: int = 5,
    goal: str = GOALS["ADF"],
    protocol: str = DEFAULT_PROTOCOL,
    seed: int = 0,
) -> list[Case]:
    """Rerank requests (GMF probability as `score`, candidates in GMF order under the paper's
    protocol) and their positives; `protocol` may leave users out (see PROTOCOLS)."""
    inter = dataset.interactions
    cases = []
    for u in users:
        u = int(u)
        user_id = inter.user_ids[u]
        picked = protocol_items(model, split, u, n_candidates, protocol, seed)
        if picked is None:
            continue
        chosen, scores = picked
        candidates = [
            Item(item_id=inter.item_ids[i], score=_prob(s), features=dataset.items.get(inter.item_ids[i], {}))
            for i, s in zip(chosen, scores, strict=True)
        ]
        recent: np.ndarray | list[int] = split.history[u][-history:] if history > 0 else []
        past = [
            HistoryItem(item_id=inter.item_ids[i], features=dataset.items.get(inter.item_ids[i], {}))
            for i in recent
        ]
        request = RerankRequest(
            request_id=f"{dataset.name}-{user_id}",
            goal=goal,
            user=User(user_id=user_id, features=dataset.users.get(user_id, {}), history=past),
            candidates=candidates,
            aspects=dataset.aspects,
            options=Options(max_steps=max_steps),
        )
        cases.append(Case(request, inter.item_ids[int(split.held_out[u])]))
    return cases


def with_goal(request: RerankRequest, goal: str) -> RerankRequest:
    """The same request under another Goal sentence (the request_id names the Goal)."""
    return request.model_copy(update={"goal": GOALS[goal], "request_id": f"{request.request_id}/{goal}"})
