"""GMF (generalised matrix factorisation, He et al. 2017), the paper's upstream ranker, in numpy.

score(u, i) = h . (p_u * q_i) + b: an element-wise product of embeddings with a learned output
layer, trained with binary cross-entropy on each positive and `negatives` sampled items, with Adam.
Numpy only, so the evaluation needs no deep-learning framework.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GMFConfig:
    dim: int = 8
    epochs: int = 30
    negatives: int = 4
    batch_size: int = 2048
    lr: float = 0.02
    l2: float = 1e-4
    seed: int = 0


@dataclass
class GMF:
    """Trained parameters; `scores` gives logits for every item."""

    users: np.ndarray
    items: np.ndarray
    h: np.ndarray
    b: float
    losses: list[float]

    def scores(self, user: int) -> np.ndarray:
        """Logits of every item for one user (higher is better)."""
        return self.items @ (self.users[user] * self.h) + self.b

    def score_pairs(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        return np.einsum("nd,nd->n", self.users[user] * self.h, self.items[item]) + self.b


class _Adam:
    def __init__(self, shapes: list[tuple[int, ...]], lr: float) -> None:
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.lr, self.t = lr, 0

    def step(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = 0.9, 0.999
        scale = self.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for p, g, m, v in zip(params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= scale * m / (np.sqrt(v) + 1e-8)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def train_gmf(user: np.ndarray, item: np.ndarray, n_users: int, n_items: int,
              config: GMFConfig | None = None) -> GMF:
    """Fit GMF on positive (user, item) pairs; negatives are re-drawn every epoch, uniformly over
    items the user has no training interaction with."""
    cfg = config or GMFConfig()
    rng = np.random.default_rng(cfg.seed)
    P = rng.normal(0.0, 0.1, size=(n_users, cfg.dim))
    Q = rng.normal(0.0, 0.1, size=(n_items, cfg.dim))
    h = np.ones((cfg.dim, 1)) + rng.normal(0.0, 0.1, size=(cfg.dim, 1))
    b = np.zeros((1, 1))
    adam = _Adam([P.shape, Q.shape, h.shape, b.shape], cfg.lr)
    known = np.unique(user.astype(np.int64) * n_items + item)
    losses: list[float] = []
    for _ in range(cfg.epochs):
        neg_u = np.repeat(user, cfg.negatives)
        neg_i = rng.integers(0, n_items, size=len(neg_u))
        for _retry in range(3):  # redraw negatives that hit a known positive
            hit = np.isin(neg_u.astype(np.int64) * n_items + neg_i, known)
            if not hit.any():
                break
            neg_i[hit] = rng.integers(0, n_items, size=int(hit.sum()))
        us = np.concatenate([user, neg_u])
        it = np.concatenate([item, neg_i])
        y = np.concatenate([np.ones(len(user)), np.zeros(len(neg_u))])
        order = rng.permutation(len(us))
        total = 0.0
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            bu, bi, by = us[idx], it[idx], y[idx]
            pu, qi = P[bu], Q[bi]
            x = pu * qi
            logit = (x @ h)[:, 0] + b[0, 0]
            prob = _sigmoid(logit)
            eps = 1e-7
            total += float(-np.sum(by * np.log(prob + eps) + (1 - by) * np.log(1 - prob + eps)))
            g = ((prob - by) / len(idx))[:, None]
            grad_h = x.T @ g + cfg.l2 * h
            grad_b = g.sum(keepdims=True)
            gP = np.zeros_like(P)
            gQ = np.zeros_like(Q)
            np.add.at(gP, bu, g * (qi * h[:, 0]))
            np.add.at(gQ, bi, g * (pu * h[:, 0]))
            gP += cfg.l2 * P
            gQ += cfg.l2 * Q
            adam.step([P, Q, h, b], [gP, gQ, grad_h, grad_b])
        losses.append(total / len(us))
    return GMF(P, Q, h[:, 0].copy(), float(b[0, 0]), losses)


def hit_rate_full(model: GMF, seen: list[np.ndarray], held_out: np.ndarray, users: np.ndarray,
                  k: int = 10, rng: np.random.Generator | None = None) -> float:
    """HR@k of the held-out item ranked among every item the user has not seen in training.
    With `rng` the scores are random instead: the chance level GMF must beat."""
    hits = 0
    for u in users:
        scores = rng.random(len(model.items)) if rng is not None else model.scores(int(u))
        scores = scores.astype(np.float64, copy=True)
        scores[seen[u]] = -np.inf
        target = scores[held_out[u]]
        hits += int(np.sum(scores > target) < k)
    return hits / max(len(users), 1)
