"""LLM4Rerank's walk over its fully connected graph of nodes (arXiv 2406.12433, section 3).

Start at Accuracy. An aspect node (Accuracy, Diversity, Fairness, ...) answers a full reranked
list, which joins the historical pool, and names the next node. Backward drops the latest pool
entry and only names the next node; the dropped list stays in later prompts as withdrawn, and
Backward does not offer a node whose list was withdrawn, so the walk never asks the same
question again (at temperature 0 it would get the same answer: a loop) and Backward can undo
each aspect at most once.
Stop ends the walk with the latest pool entry (the upstream
order when the pool is empty). Every LLM call counts toward the step cap, which forces Stop.
The Goal sentence and the pool reach every prompt through the policy.

The walk reads no clock, randomness or setting except through its arguments, so the same
request, policy answers and plan always give the same path, steps and ranking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import DeadlineExceeded
from ..schemas import RerankRequest, Usage
from ..status import ResultStatus, Status
from .nodes import ACCURACY, BACKWARD, STOP, WalkPlan, offered_after
from .steps import Journal, NodeAnswer, NodeAsk, NullJournal, Policy, StepRecord


@dataclass
class WalkOutcome:
    ranking: list[str]
    path: list[str]
    status: ResultStatus
    reason: str | None
    policy: str
    llm_calls: int
    usage: Usage
    steps: list[StepRecord] = field(default_factory=list)


async def walk(
    request: RerankRequest,
    policy: Policy,
    plan: WalkPlan,
    *,
    journal: Journal | None = None,
    fallback: Policy | None = None,
    clock: Callable[[], float] = time.monotonic,
    started: float | None = None,
) -> WalkOutcome:
    """Run one walk; with `fallback`, a walk whose policy never gave a usable list is redone by it.

    The deadline counts from `started` (the request's receipt, on `clock`), so a resumed walk
    keeps the deadline of the first attempt; without it, from now."""
    journal = journal or NullJournal()
    upstream = [c.item_id for c in request.candidates]
    deadline = (clock() if started is None else started) + plan.deadline_ms / 1000
    pool: list[tuple[str, tuple[str, ...]]] = []  # the historical pool: (node, list) per step
    withdrawn: list[tuple[str, tuple[str, ...]]] = []  # lists Backward dropped, oldest first
    path: list[str] = []
    steps: list[StepRecord] = []
    calls = 0
    usable_lists = 0
    status: ResultStatus = Status.OK
    reason: str | None = None
    reason_note: str | None = None
    node = ACCURACY

    while node != STOP:
        if calls >= plan.max_steps:
            reason_note = f"step cap of {plan.max_steps} LLM calls reached"
            break
        # Backward's prompt already shows the pool without the entry it drops
        shown = tuple(pool[:-1]) if node == BACKWARD else tuple(pool)
        offered = offered_after(plan, len(shown) + (0 if node == BACKWARD else 1))
        if node == BACKWARD and pool:  # never back to a node whose list was withdrawn
            undone = {pool[-1][0], *(n for n, _ in withdrawn)}
            offered = tuple(n for n in offered if n not in undone) or (STOP,)
        ask = NodeAsk(
            request,
            plan,
            node,
            len(steps) + 1,
            shown,
            offered,
            tuple(path),
            plan.max_steps - calls,
            deadline,
            tuple(withdrawn),
        )
        try:
            answer = await policy.answer(ask)
        except DeadlineExceeded as exc:
            status, reason = Status.DEGRADED, f"deadline of {plan.deadline_ms} ms passed at {node}"
            if exc.calls:  # the node's calls made before the deadline are stored and counted
                reason += f": {exc}"
                calls += len(exc.calls)
                path.append(node)
                cut = NodeAnswer(None, None, policy.name, list(exc.calls), problem=reason)
                step = _record(ask, cut, None, len(pool))
                steps.append(step)
                await journal.record(step)
            break
        calls += sum(1 for c in answer.calls if c.raw is not None or c.error is not None)
        path.append(node)
        removed = None
        if node == BACKWARD:
            if pool:
                withdrawn.append(pool.pop())
                removed = list(withdrawn[-1][1])
        elif answer.ranking is not None:
            pool.append((node, tuple(answer.ranking)))
            usable_lists += 1
        step = _record(ask, answer, removed, len(pool))
        steps.append(step)
        await journal.record(step)
        if answer.problem is not None:
            status, reason = Status.DEGRADED, f"unusable answer at {node}: {answer.problem}"
            break
        node = answer.next_node or STOP

    if status == Status.DEGRADED and usable_lists == 0 and fallback is not None:
        offset = len(steps)
        rest = await walk(
            request, fallback, plan, journal=_Offset(journal, offset), clock=clock, started=started
        )
        steps += [s.model_copy(update={"step": s.step + offset}) for s in rest.steps]
        return WalkOutcome(
            rest.ranking,
            [*path, *rest.path],
            status,
            f"{reason}; the {fallback.name} policy produced the list",
            f"{policy.name}+{fallback.name}",
            calls,
            _usage(steps),
            steps,
        )

    final = list(pool[-1][1]) if pool else upstream
    stop = StepRecord(
        step=len(steps) + 1,
        node=STOP,
        policy="walk",
        ranking=final,
        pool_size=len(pool),
        notes=[reason_note] if reason_note else [],
    )
    steps.append(stop)
    await journal.record(stop)
    path.append(STOP)
    if sorted(final) != sorted(upstream):  # unreachable unless a policy breaks its contract
        final, status, reason = upstream, Status.FAILED, "internal error: ranking was not a permutation"
    return WalkOutcome(final, path, status, reason, policy.name, calls, _usage(steps), steps)


def _record(ask: NodeAsk, answer: NodeAnswer, removed: list[str] | None, pool_size: int) -> StepRecord:
    return StepRecord(
        step=ask.step,
        node=ask.node,
        policy=answer.policy,
        ranking=answer.ranking,
        removed=removed,
        next_node=answer.next_node,
        offered=list(ask.offered),
        pool_size=pool_size,
        calls=answer.calls,
        notes=answer.notes,
        problem=answer.problem,
        repair=answer.repair,
        withdrawn=[list(r) for _, r in ask.withdrawn] or None,
        cached_tokens=sum(c.cached_tokens or 0 for c in answer.calls),
        prompt_tokens=sum(c.prompt_tokens for c in answer.calls),
        completion_tokens=sum(c.completion_tokens for c in answer.calls),
        latency_ms=round(sum(c.latency_ms for c in answer.calls), 3),
        retries=sum(c.retries for c in answer.calls),
    )


def _usage(steps: list[StepRecord]) -> Usage:
    return Usage(
        prompt_tokens=sum(s.prompt_tokens for s in steps),
        completion_tokens=sum(s.completion_tokens for s in steps),
    )


class _Offset:
    """Numbers a fallback walk's steps after the steps already taken."""

    def __init__(self, journal: Journal, offset: int) -> None:
        self.journal, self.offset = journal, offset

    async def record(self, step: StepRecord) -> None:
        await self.journal.record(step.model_copy(update={"step": step.step + self.offset}))
