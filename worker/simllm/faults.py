"""Seeded faults of the simulated server: latency, 429s, 500s, timeouts, malformed answers and
hostile characters (U+0000, lone surrogates, any text) injected into answers.

Each draw is seeded by (seed, prompt, how often this prompt was seen), so a run's faults do not
depend on the order concurrent requests arrive in, and a retried call can succeed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import OrderedDict
from typing import Literal

from pydantic import BaseModel, Field

from ..engine.nodes import node_names


class Faults(BaseModel):
    latency_ms: float = Field(0.0, ge=0)
    latency_jitter_ms: float = Field(0.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    rate_limit_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    malformed_rate: float = Field(0.0, ge=0, le=1)
    timeout_s: float = Field(120.0, gt=0)
    backward_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="how often an aspect step names Backward when it is on offer (seeded per prompt)",
    )
    inject_rate: float = Field(0.0, ge=0, le=1, description="share of answers given hostile text")
    inject_texts: list[str] = Field(
        default_factory=lambda: ["\u0000"], description="one is chosen per injected answer"
    )
    inject_at: Literal["start", "end", "random"] = "end"


def inject(answer: str, faults: Faults, rng: random.Random) -> str:
    """Put one of `inject_texts` into the answer (at its start, end or a seeded position)."""
    text = rng.choice(faults.inject_texts) if faults.inject_texts else "\u0000"
    at = {"start": 0, "end": len(answer)}.get(faults.inject_at, rng.randint(0, len(answer)))
    return answer[:at] + text + answer[at:]


class Dice:
    def __init__(self, seed: int, remember: int = 100_000) -> None:
        self.seed = seed
        self.seen: OrderedDict[str, int] = OrderedDict()
        self.remember = remember

    def for_prompt(self, prompt: str) -> random.Random:
        key = hashlib.sha256(prompt.encode()).hexdigest()
        count = self.seen.pop(key, 0)
        self.seen[key] = count + 1
        if len(self.seen) > self.remember:
            self.seen.popitem(last=False)
        return random.Random(f"{self.seed}:{key}:{count}")


def malform(answer: str, rng: random.Random) -> str:
    """One of the ways real models break the format."""
    numbers = re.findall(r"\d+", answer)
    kind = rng.choice(["prose", "think", "fullwidth", "dupes", "unknown", "case", "garbage", "truncated"])
    if kind == "prose":
        return f"Sure! Here is the reranked list based on the goal:\n{answer}\nHope this helps."
    if kind == "think":
        return f"<think>The user likes action, so [1, 1, 1] would be wrong.</think>\n{answer}"
    if kind == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() else c for c in answer)
    if kind == "dupes" and len(numbers) > 3:
        return answer.replace(numbers[2], numbers[0], 1)
    if kind == "unknown":
        return answer.replace(numbers[0], "999", 1) if numbers else answer
    if kind == "case":
        return re.sub(
            "(" + "|".join(map(re.escape, node_names())) + ")", lambda m: m.group(1).upper() + ".", answer
        )
    if kind == "truncated":
        return answer[: max(1, len(answer) // 3)]
    return "I am sorry, but I cannot rank these items without more information."
