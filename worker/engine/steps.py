"""What the walk exchanges with a policy and hands to a journal, one record per node step."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, Field, model_validator

from ..schemas import RepairSummary, RerankRequest
from .nodes import WalkPlan

# What PostgreSQL text and JSONB cannot hold: U+0000 and unpaired surrogates.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def storable(text: str) -> tuple[str, list[list[int]]]:
    """`text` with each unstorable character replaced by U+FFFD, and [offset, code point] of each
    replacement, so the original is restored exactly by `restore`."""
    replaced = [[m.start(), ord(m.group())] for m in UNSTORABLE.finditer(text)]
    return (UNSTORABLE.sub(REPLACEMENT, text) if replaced else text), replaced


def restore(text: str, replaced: list[list[int]]) -> str:
    chars = list(text)
    for offset, code in replaced:
        chars[offset] = chr(code)
    return "".join(chars)


class HTTPAttempt(BaseModel):
    """One HTTP request of a call: its status (None when no response came), error and latency."""

    status: int | None = None
    error: str | None = None
    latency_ms: float = 0.0


class LLMCall(BaseModel):
    """One chat completion: exactly what was sent and what came back, with every HTTP attempt.

    `deadline_passed` marks a call the request's deadline cut short (the endpoint kept failing or
    hung): a replay meets the deadline at the same call. An answer holding characters the store
    cannot keep (U+0000, unpaired surrogates) is kept with U+FFFD in their place and `raw_replaced`
    listing them: lossless, and parsed from that form."""

    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None = None
    raw: str | None = None
    raw_replaced: list[list[int]] | None = Field(
        None, description="[offset, code point] of characters in the answer stored as U+FFFD"
    )
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    retries: int = 0
    error: str | None = None
    attempts: list[HTTPAttempt] = Field(default_factory=list)
    deadline_passed: bool = False
    finish_reason: str | None = Field(None, description="stop, length, ... as the server said")
    model: str | None = Field(None, description="the model id the server answered with")
    cached_tokens: int | None = Field(
        None, description="prompt tokens served from the server's prefix cache, where it reports them"
    )
    window: list[int] | None = Field(
        None,
        description="[first, last] positions (1-based) of the "
        "previous list this call reranked, for a windowed step",
    )
    max_tokens: int | None = Field(None, description="the answer budget this call was sent with")
    counted_tokens: int | None = Field(
        None,
        description="prompt tokens as counted before sending (the configured tokenizer, or the estimate)",
    )

    @model_validator(mode="after")
    def _storable(self) -> LLMCall:
        if self.raw is not None and UNSTORABLE.search(self.raw):
            self.raw, replaced = storable(self.raw)
            self.raw_replaced = [*(self.raw_replaced or []), *replaced]
        if self.error is not None and UNSTORABLE.search(self.error):
            self.error = (
                self.error.encode("utf-8", "backslashreplace")
                .decode("utf-8", "replace")
                .replace("\x00", "\\x00")
            )
        return self

    @property
    def original_raw(self) -> str | None:
        """The answer exactly as the server sent it."""
        if self.raw is None or not self.raw_replaced:
            return self.raw
        return restore(self.raw, self.raw_replaced)


class RepairCount(RepairSummary):
    """How far the model's answers were from a permutation (see engine.parse.Repair)."""

    def add(self, other: RepairSummary) -> RepairCount:
        return RepairCount(**{k: getattr(self, k) + getattr(other, k) for k in RepairSummary.model_fields})


class StepRecord(BaseModel):
    """One node step of the historical pool, as auditors and replays read it."""

    step: int
    node: str
    policy: str
    ranking: list[str] | None = Field(None, description="the list this step added to the pool")
    removed: list[str] | None = Field(None, description="the list Backward dropped")
    next_node: str | None = None
    offered: list[str] = Field(default_factory=list)
    pool_size: int = 0
    calls: list[LLMCall] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    problem: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    retries: int = 0
    repair: RepairCount | None = Field(None, description="what repair did to this step's answers")
    withdrawn: list[list[str]] | None = Field(
        None, description="lists Backward withdrew, as the step's prompt showed them"
    )
    cached_tokens: int = 0


@dataclass(frozen=True)
class NodeAsk:
    """Everything a policy may look at to answer one node; nothing global."""

    request: RerankRequest
    plan: WalkPlan
    node: str
    step: int
    pool: tuple[tuple[str, tuple[str, ...]], ...]
    offered: tuple[str, ...]
    visited: tuple[str, ...]
    calls_left: int
    deadline: float
    withdrawn: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def previous(self) -> list[str]:
        """The list a reranking starts from: the latest pool entry, else the upstream order."""
        if self.pool:
            return list(self.pool[-1][1])
        return [c.item_id for c in self.request.candidates]


@dataclass
class NodeAnswer:
    """A policy's answer: a full permutation (aspect nodes) or None, and the next node."""

    ranking: list[str] | None
    next_node: str | None
    policy: str
    calls: list[LLMCall] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    repair: RepairCount | None = None


class Policy(Protocol):
    """Answers node prompts: the LLM, the heuristic, or recorded answers."""

    name: str

    async def answer(self, ask: NodeAsk) -> NodeAnswer: ...


class Journal(Protocol):
    """Where steps go as they complete (JSONL, SQLite, PostgreSQL)."""

    async def record(self, step: StepRecord) -> None: ...


class NullJournal:
    async def record(self, step: StepRecord) -> None:
        return None


class ListJournal:
    """Keeps steps in memory, for tests and the offline CLI."""

    def __init__(self) -> None:
        self.steps: list[StepRecord] = []

    async def record(self, step: StepRecord) -> None:
        self.steps.append(step)
