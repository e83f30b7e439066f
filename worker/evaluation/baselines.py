"""Baselines from the paper's table that need no training beyond GMF. Each takes a rerank request
(candidates in upstream order, GMF score as `score`) and returns a permutation of its item ids."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import numpy as np

from ..engine.measures import categories_of, group_of
from ..schemas import AspectConfig, Item, RerankRequest

Baseline = Callable[[RerankRequest], list[str]]


def _categories(item: Item, attribute: str) -> set[str]:
    return categories_of(item.features.get(attribute))


def _relevance(request: RerankRequest) -> np.ndarray:
    """Upstream scores min-max scaled to [0, 1] (the upstream order's rank if scores are missing)."""
    scores = [c.score for c in request.candidates]
    n = len(scores)
    if any(s is None for s in scores):
        return np.array([1.0 - i / n for i in range(n)])
    arr = np.asarray(scores, dtype=float)
    span = arr.max() - arr.min()
    return (arr - arr.min()) / span if span > 0 else np.ones(n)


def _aspect(request: RerankRequest, name: str) -> AspectConfig | None:
    return request.aspects.get(name)


def upstream(request: RerankRequest) -> list[str]:
    """The upstream ranker's order as given (GMF, best first): the reference every reranker moves."""
    return [c.item_id for c in request.candidates]


def random_order(request: RerankRequest, seed: int = 0) -> list[str]:
    """The candidates in a random order, seeded by the request id: what knowing nothing scores on
    these lists (HR@k of n is k / n in expectation whatever the protocol)."""
    digest = hashlib.sha256(f"{seed}:{request.request_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    ids = upstream(request)
    return [ids[i] for i in rng.permutation(len(ids))]


def popularity(counts: Mapping[str, float]) -> Baseline:
    """A reranker by training popularity (interactions per item), most popular first; ties keep the
    upstream order. `counts` come from the training split, never from the held-out items."""

    def rank(request: RerankRequest) -> list[str]:
        ids = upstream(request)
        return sorted(ids, key=lambda i: (-counts.get(i, 0.0), ids.index(i)))

    return rank


def mmr(request: RerankRequest, lam: float = 0.5) -> list[str]:
    """Maximal marginal relevance (Carbonell & Goldstein 1998): next = argmax
    lam * relevance - (1 - lam) * max Jaccard similarity of categories to the items already placed."""
    aspect = _aspect(request, "diversity")
    if aspect is None:
        return upstream(request)
    rel = _relevance(request)
    cats = [_categories(c, aspect.attribute) for c in request.candidates]
    left = list(range(len(cats)))
    out: list[int] = []
    while left:

        def value(i: int) -> float:
            sim = max(
                (len(cats[i] & cats[j]) / len(cats[i] | cats[j]) if cats[i] | cats[j] else 0.0 for j in out),
                default=0.0,
            )
            gain: float = lam * rel[i] - (1 - lam) * sim
            return gain

        best = max(left, key=lambda i: (value(i), -i))
        left.remove(best)
        out.append(best)
    return [request.candidates[i].item_id for i in out]


def dpp(request: RerankRequest, theta: float = 0.7, eps: float = 1e-10) -> list[str]:
    """Fast greedy MAP inference for a DPP (Chen et al., NeurIPS 2018): kernel L = diag(q) S diag(q),
    quality q = exp(a * relevance) with a = theta / (2 (1 - theta)), S = cosine similarity of the
    items' category indicator vectors. Items are added while the kernel stays non-singular (each
    adds a new direction of categories); the rest follow in upstream order."""
    aspect = _aspect(request, "diversity")
    if aspect is None:
        return upstream(request)
    n = len(request.candidates)
    cats = [_categories(c, aspect.attribute) for c in request.candidates]
    vocab = sorted(set().union(*cats))
    feats = np.zeros((n, len(vocab) + n))
    index = {c: j for j, c in enumerate(vocab)}
    for i, cs in enumerate(cats):
        for c in cs:
            feats[i, index[c]] = 1.0
        if not cs:
            feats[i, len(vocab) + i] = 1.0  # no category: similar to nothing
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    quality = np.exp(theta / (2 * (1 - theta)) * _relevance(request))
    kernel = quality[:, None] * (feats @ feats.T) * quality[None, :]
    selected = _greedy_map(kernel, n, eps)
    rest = [i for i in range(n) if i not in set(selected)]
    return [request.candidates[i].item_id for i in [*selected, *rest]]


def _greedy_map(kernel: np.ndarray, max_length: int, eps: float) -> list[int]:
    """Chen et al.'s Algorithm 1: incremental Cholesky, O(N M^2) for M selected of N items."""
    n = kernel.shape[0]
    cis = np.zeros((max_length, n))
    di2s = np.diag(kernel).astype(float).copy()
    j = int(np.argmax(di2s))
    selected = [j]
    while len(selected) < max_length:
        k = len(selected) - 1
        ci_opt = cis[:k, j]
        di_opt = np.sqrt(di2s[j])
        eis = (kernel[j, :] - ci_opt @ cis[:k, :]) / di_opt
        cis[k, :] = eis
        di2s -= np.square(eis)
        di2s[j] = -np.inf
        j = int(np.argmax(di2s))
        if di2s[j] < eps:
            break
        selected.append(j)
    return selected


def fair(request: RerankRequest) -> list[str]:
    """Proportional-representation reranking (FA*IR-style without the significance test): at every
    prefix length t each fairness group holds at least floor(t * its share of the candidates);
    a group that falls short gets its best remaining item, otherwise the best item overall goes next."""
    aspect = _aspect(request, "fairness")
    if aspect is None:
        return upstream(request)
    ids = upstream(request)
    group = {
        c.item_id: group_of(c.features.get(aspect.attribute), aspect) or "(none)" for c in request.candidates
    }
    size: dict[str, int] = {}
    for g in group.values():
        size[g] = size.get(g, 0) + 1
    n = len(ids)
    placed = dict.fromkeys(size, 0)
    left = list(ids)
    out: list[str] = []
    for t in range(1, n + 1):
        short = [g for g in size if placed[g] < (t * size[g]) // n]
        pool = [i for i in left if group[i] in short] if short else left
        best = pool[0]
        left.remove(best)
        out.append(best)
        placed[group[best]] += 1
    return out


BASELINES: dict[str, Baseline] = {
    "upstream": upstream,
    "random": random_order,
    "mmr": mmr,
    "dpp": dpp,
    "fair": fair,
}
