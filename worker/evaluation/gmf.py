"""GMF (generalised matrix factorisation, He et al. 2017), the paper's upstream ranker, in numpy.

score(u, i) = h . (p_u * q_i) + b: an element-wise product of embeddings with a learned output
layer, trained with binary cross-entropy on each positive and `negatives` sampled items, with Adam.
The L2 penalty is per example (each row pays for the times it is used, scaled like the data term),
training stops early on a held-out validation interaction per user, and a model that did not learn
(scores tied, or loss at the base rate) fails the run instead of producing candidates.
Numpy only (float32), so the evaluation needs no deep-learning framework.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DTYPE = np.float32


class GMFCollapsed(RuntimeError):
    """GMF did not learn: its scores carry no information about the user."""


@dataclass
class GMFConfig:
    dim: int = 8
    epochs: int = 30  # the most; early stopping usually ends sooner
    negatives: int = 4
    batch_size: int = 4096
    lr: float = 0.01
    l2: float = 1e-4  # per example: l2 * (|p_u|^2 + |q_i|^2) added to each example's loss
    patience: int = 3  # epochs without a better validation HR@10 before stopping
    validation_users: int = 2000  # users whose last training interaction is held out for validation
    seed: int = 0
    guard: bool = True  # raise GMFCollapsed when the model did not learn


@dataclass
class GMF:
    """Trained parameters; `scores` gives logits for every item."""

    users: np.ndarray
    items: np.ndarray
    h: np.ndarray
    b: float
    losses: list[float]
    validation_hr: list[float] = field(default_factory=list)
    best_epoch: int = 0
    base_rate_loss: float = math.nan

    def scores(self, user: int) -> np.ndarray:
        """Logits of every item for one user (higher is better)."""
        logits: np.ndarray = self.items @ (self.users[user] * self.h) + self.b
        return logits

    def score_matrix(self, users: np.ndarray) -> np.ndarray:
        """Logits of every item for several users, one row each."""
        logits: np.ndarray = (self.users[users] * self.h) @ self.items.T + self.b
        return logits

    def score_pairs(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        logits: np.ndarray = np.einsum("nd,nd->n", self.users[user] * self.h, self.items[item]) + self.b
        return logits


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.lr, self.t = lr, 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        scale = self.lr * math.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= scale * m / (np.sqrt(v) + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def base_rate_loss(negatives: int) -> float:
    """The cross-entropy of predicting the share of positives for every example: what a model that
    learned nothing reaches."""
    p = 1.0 / (1 + negatives)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def _scatter(rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sum `values` (batch x dim) into an (n x dim) gradient by row index (faster than np.add.at)."""
    out = np.empty((n, values.shape[1]), dtype=DTYPE)
    for d in range(values.shape[1]):
        out[:, d] = np.bincount(rows, weights=values[:, d], minlength=n)
    return out


def _validation_split(
    user: np.ndarray, n_users: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A mask of training rows and the validation row per sampled user: each user's last row (the
    latest interaction when the rows are in time order per user, as `leave_one_out` gives them),
    for users that keep at least one other row."""
    last = np.full(n_users, -1, dtype=np.int64)
    last[user] = np.arange(len(user))  # the last assignment per index wins
    counts = np.bincount(user, minlength=n_users)
    candidates = np.flatnonzero((counts >= 2) & (last >= 0))
    if count <= 0 or len(candidates) == 0:
        return np.ones(len(user), dtype=bool), np.empty(0, dtype=np.int64)
    chosen = rng.choice(candidates, size=min(count, len(candidates)), replace=False)
    rows = last[chosen]
    keep = np.ones(len(user), dtype=bool)
    keep[rows] = False
    return keep, rows


def full_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target counting ties against it (pessimistic): 1 + the number of
    other entries scoring at least as high. Excluded entries are -inf and never outrank a target."""
    target = scores[np.arange(len(targets)), targets][:, None]
    ranks: np.ndarray = np.sum(scores >= target, axis=1)  # the target itself makes the 1
    return ranks


def _mask_seen(scores: np.ndarray, users: np.ndarray, pair_user: np.ndarray, pair_item: np.ndarray) -> None:
    row_of = np.full(int(max(users.max(initial=0), pair_user.max(initial=0))) + 1, -1, dtype=np.int64)
    row_of[users] = np.arange(len(users))
    rows = row_of[pair_user]
    keep = rows >= 0
    scores[rows[keep], pair_item[keep]] = -np.inf


def train_gmf(
    user: np.ndarray, item: np.ndarray, n_users: int, n_items: int, config: GMFConfig | None = None
) -> GMF:
    """Fit GMF on positive (user, item) pairs (rows in time order per user); negatives are re-drawn
    every epoch, uniformly over items the user has no training interaction with. Keeps the epoch with
    the best validation HR@10 (full catalogue, ties against the item) and raises GMFCollapsed when the
    model did not learn."""
    cfg = config or GMFConfig()
    rng = np.random.default_rng(cfg.seed)
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    keep, val_rows = _validation_split(user, n_users, cfg.validation_users, rng)
    val_user, val_item = user[val_rows], item[val_rows]
    tr_user, tr_item = user[keep], item[keep]
    P = rng.normal(0.0, 0.1, size=(n_users, cfg.dim)).astype(DTYPE)
    Q = rng.normal(0.0, 0.1, size=(n_items, cfg.dim)).astype(DTYPE)
    h = (np.ones(cfg.dim) + rng.normal(0.0, 0.1, size=cfg.dim)).astype(DTYPE)
    b = np.zeros(1, dtype=DTYPE)
    params = [P, Q, h, b]
    adam = _Adam(params, cfg.lr)
    known = np.unique(user * n_items + item)  # validation rows count as seen too
    n_pos = len(tr_user)
    y = np.concatenate([np.ones(n_pos, dtype=DTYPE), np.zeros(n_pos * cfg.negatives, dtype=DTYPE)])
    us = np.concatenate([tr_user, np.repeat(tr_user, cfg.negatives)])
    losses: list[float] = []
    val_hr: list[float] = []
    best: tuple[float, int, list[np.ndarray]] = (-1.0, 0, [p.copy() for p in params])
    eps = 1e-7
    for epoch in range(cfg.epochs):
        neg_i = rng.integers(0, n_items, size=n_pos * cfg.negatives)
        neg_u = us[n_pos:]
        for _retry in range(5):  # redraw negatives that hit a known positive
            hit = np.flatnonzero(np.isin(neg_u * n_items + neg_i, known))
            if len(hit) == 0:
                break
            neg_i[hit] = rng.integers(0, n_items, size=len(hit))
        it = np.concatenate([tr_item, neg_i])
        order = rng.permutation(len(us))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            bu, bi, by = us[idx], it[idx], y[idx]
            pu, qi = P[bu], Q[bi]
            x = pu * qi
            prob = _sigmoid(x @ h + b[0])
            total += float(-np.sum(by * np.log(prob + eps) + (1 - by) * np.log(1 - prob + eps)))
            n = len(idx)
            g = ((prob - by) / n)[:, None]
            grad_h = (x * g).sum(axis=0)
            grad_b = g.sum(axis=0)
            decay = 2.0 * cfg.l2 / n
            gP = _scatter(bu, g * (qi * h) + decay * pu, n_users)
            gQ = _scatter(bi, g * (pu * h) + decay * qi, n_items)
            adam.step(params, [gP, gQ, grad_h, grad_b])
        losses.append(total / len(us))
        if len(val_user) == 0:
            best = (math.nan, epoch + 1, [p.copy() for p in params])
            continue
        hr = validation_hit_rate(GMF(P, Q, h, float(b[0]), []), val_user, val_item, tr_user, tr_item)
        val_hr.append(hr)
        if hr > best[0]:
            best = (hr, epoch + 1, [p.copy() for p in params])
        elif epoch + 1 - best[1] >= cfg.patience:
            break
    P, Q, h, b = best[2]
    model = GMF(P, Q, h, float(b[0]), losses, val_hr, best[1], base_rate_loss(cfg.negatives))
    if cfg.guard:
        check_learned(model, val_user if len(val_user) else np.unique(tr_user)[:500])
    return model


def validation_hit_rate(
    model: GMF,
    users: np.ndarray,
    items: np.ndarray,
    seen_user: np.ndarray,
    seen_item: np.ndarray,
    k: int = 10,
    chunk: int = 1024,
) -> float:
    """HR@k of each (user, item) ranked among the user's unseen items, ties counted against it."""
    hits = 0
    for start in range(0, len(users), chunk):
        u, i = users[start : start + chunk], items[start : start + chunk]
        scores = model.score_matrix(u).astype(np.float64)
        _mask_seen(scores, u, seen_user, seen_item)
        scores[np.arange(len(u)), i] = model.score_pairs(u, i)  # the target itself is never masked
        hits += int(np.sum(full_ranks(scores, i) <= k))
    return hits / max(len(users), 1)


def check_learned(model: GMF, users: np.ndarray, margin: float = 0.95) -> None:
    """Raise GMFCollapsed when the final training loss is not clearly below the base-rate loss or the
    item scores are tied for most users: the candidate lists would then be item-index order."""
    problems = []
    if model.losses and model.losses[-1] > margin * model.base_rate_loss:
        problems.append(
            f"training loss {model.losses[-1]:.4f} is at the base-rate loss "
            f"{model.base_rate_loss:.4f} (what predicting the share of positives reaches)"
        )
    if len(users):
        scores = model.score_matrix(users[:500]).astype(np.float64)
        spread = scores.max(axis=1) - scores.min(axis=1)
        scale = max(1.0, float(np.abs(scores).max()))
        tied = int(np.sum(spread <= 1e-6 * scale))
        if tied > len(spread) // 2:
            problems.append(
                f"every item has the same score for {tied} of {len(spread)} users "
                f"(largest spread {float(spread.max()):.2e})"
            )
    if problems:
        raise GMFCollapsed(
            "GMF collapsed and did not learn: "
            + "; ".join(problems)
            + ". Its candidate lists would carry no information; check the data "
            "(enough interactions per user) or the GMF settings (lower l2)"
        )


def hit_rate_full(
    model: GMF | None,
    seen: list[np.ndarray],
    held_out: np.ndarray,
    users: np.ndarray,
    k: int = 10,
    rng: np.random.Generator | None = None,
    popularity: np.ndarray | None = None,
) -> float:
    """HR@k of the held-out item ranked among every item the user has not seen in training, ties
    counted against it. With `rng` the scores are random (chance level); with `popularity` they are
    the items' training counts (the popularity baseline)."""
    hits = 0
    for u in users:
        if rng is not None:
            n = len(model.items) if model is not None else len(popularity)  # type: ignore[arg-type]
            scores = rng.random(n)
        elif popularity is not None:
            scores = popularity.astype(np.float64, copy=True)
        else:
            assert model is not None
            scores = model.scores(int(u)).astype(np.float64)
        scores[seen[u]] = -np.inf
        target = scores[held_out[u]]
        hits += int(np.sum(scores >= target) <= k)
    return hits / max(len(users), 1)


def popularity_counts(item: np.ndarray, n_items: int) -> np.ndarray:
    """Training interactions per item: the popularity ranker's score."""
    return np.bincount(np.asarray(item, dtype=np.int64), minlength=n_items).astype(np.float64)
