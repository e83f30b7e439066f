"""Seeded sample requests in the contract's format, shaped like a movie feed (examples, tests,
benchmarks). Not a dataset: `llm4rerank eval --dataset synthetic` generates users and items."""

from __future__ import annotations

import random
from typing import Any

TITLES = [
    "Heat",
    "Fargo",
    "Alien",
    "Ghost",
    "Se7en",
    "Psycho",
    "Casino",
    "Brazil",
    "Twister",
    "Sabrina",
    "Jumanji",
    "Toy Story",
    "Ran",
    "Clue",
    "Big",
    "Rocky",
]
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Thriller", "Sci-Fi", "Animation", "Documentary"]
GOALS = [
    "Mainly focus on accuracy, followed by diversity",
    "Focus on diversity",
    "Focus on fairness",
    "Consider accuracy, diversity and fairness in a balanced way",
    "Mainly focus on diversity, followed by fairness",
    "Mainly focus on fairness, followed by diversity",
    "Focus on accuracy",
]


def sample_requests(
    count: int, *, seed: int = 0, prefix: str = "sample", candidates: int = 20, history: int = 5
) -> list[dict[str, Any]]:
    """`count` requests with genre (diversity) and year split at 1996 (fairness), Goals cycling."""
    rng = random.Random(seed)
    out = []
    for r in range(count):
        seen = [
            {"item_id": f"h{i}", "features": {"title": rng.choice(TITLES), "genre": [rng.choice(GENRES)]}}
            for i in range(history)
        ]
        items = [
            {
                "item_id": f"{prefix}{r}-m{i}",
                "score": round(rng.random(), 4),
                "features": {
                    "title": rng.choice(TITLES),
                    "genre": rng.sample(GENRES, rng.choice([1, 1, 1, 2])),
                    "year": rng.randrange(1970, 2005),
                },
            }
            for i in range(candidates)
        ]
        out.append(
            {
                "request_id": f"{prefix}-{r:04d}",
                "goal": GOALS[r % len(GOALS)],
                "user": {
                    "user_id": f"{prefix}-u{r}",
                    "features": {"gender": rng.choice("MF"), "age": rng.choice([18, 25, 35, 45])},
                    "history": seen,
                },
                "candidates": items,
                "aspects": {
                    "diversity": {"attribute": "genre"},
                    "fairness": {"attribute": "year", "split_at": 1996},
                },
            }
        )
    return out
