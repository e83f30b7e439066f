"""Run a stored session to completion: claim it, resume from its persisted steps, store the result.

The same function serves the Kafka worker, `rerank --store` and live replay; resuming a crashed
session re-runs the walk with its stored LLM answers served first, so no stored call is repeated.
It runs with the RunConfig stored at receipt, and its deadline and latency count from receipt.
"""

from __future__ import annotations

from pydantic import ValidationError

from .engine.walk import WalkOutcome
from .runconfig import RunConfig
from .schemas import RerankResult, Usage, utcnow
from .service import Reranker
from .status import Status
from .store.journal import GroupCommitWriter, SessionJournal
from .store.store import Claim, Store

CRASH_LIMIT = 3


def crash_reason(crashes: int, last_error: str | None) -> str:
    return f"the walk crashed {crashes} time(s); upstream order returned; last error: {last_error}"


SessionDone = tuple[RerankResult, WalkOutcome | None, int]
"""The result, the walk's outcome (None once failed for crashes), calls served from the store."""


async def run_session(
    store: Store,
    writer: GroupCommitWriter,
    reranker: Reranker,
    request_id: str,
    owner: str,
    lease_s: float,
    crash_limit: int = CRASH_LIMIT,
) -> SessionDone | None:
    """Returns (result, outcome, calls served from the store), or None when the session is
    finished already or another live worker holds it. After `crash_limit` crashes the session is
    failed: (result, None, 0). A walk that raises is not caught here: the caller records the
    crash (Store.crashed), which releases the lease at once."""
    claim = await store.claim(request_id, owner, lease_s)
    if claim is None:
        return None
    if claim.crashes >= crash_limit:
        failed = await _fail(store, reranker, claim, owner)
        return (failed, None, 0) if failed is not None else None
    config, stored_config = _config_of(reranker, claim)
    recorded = [call for step in claim.steps for call in step.calls]
    journal = SessionJournal(
        writer, claim.session_id, persisted=max((s.step for s in claim.steps), default=0)
    )
    result, outcome = await reranker.run(
        claim.request,
        config=config,
        journal=journal,
        recorded=recorded,
        live=True,
        replay_of=claim.replay_of,
        received_at=claim.receipt_at,
        attempts=claim.attempts,
    )
    await journal.flush()
    if not await store.complete(
        claim.session_id, owner, result, None if stored_config else config.model_dump(mode="json")
    ):
        return None  # the lease was lost meanwhile; the holder stores its own result
    return result, outcome, len(recorded)


def _config_of(reranker: Reranker, claim: Claim) -> tuple[RunConfig, bool]:
    """The RunConfig stored at receipt; sessions stored without one get today's (and keep it)."""
    if claim.run_config:
        try:
            return RunConfig.model_validate(claim.run_config), True
        except ValidationError:
            pass  # an older shape: run with today's, which the result then records
    return reranker.run_config(claim.request), False


async def _fail(store: Store, reranker: Reranker, claim: Claim, owner: str) -> RerankResult | None:
    """A request that crashed the walk this often ends `failed` with the upstream order."""
    config, _ = _config_of(reranker, claim)
    received = claim.receipt_at
    latency = round((utcnow() - received).total_seconds() * 1000) if received else 0
    result = RerankResult(
        request_id=claim.request.request_id,
        status=Status.FAILED,
        ranking=[c.item_id for c in claim.request.candidates],
        path=[],
        llm_calls=sum(1 for s in claim.steps for c in s.calls if c.raw is not None or c.error),
        usage=Usage(
            prompt_tokens=sum(s.prompt_tokens for s in claim.steps),
            completion_tokens=sum(s.completion_tokens for s in claim.steps),
        ),
        model=reranker.model if config.policy == "llm" else "heuristic",
        prompt_version=reranker.prompt_version if config.policy == "llm" else "heuristic",
        latency_ms=max(latency, 0),
        reason=crash_reason(claim.crashes, claim.last_error),
        completed_at=utcnow(),
        policy="none",
        replay_of=claim.replay_of,
        attempts=claim.attempts,
    )
    stored = await store.complete(claim.session_id, owner, result, config.model_dump(mode="json"))
    return result if stored else None
