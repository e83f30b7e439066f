"""Run a stored session to completion: claim it, resume from its persisted steps, store the result.

The same function serves the Kafka worker, `rerank --store` and live replay; resuming a crashed
session re-runs the walk with its stored LLM answers served first, so no stored call is repeated.
"""

from __future__ import annotations

from .engine.walk import WalkOutcome
from .schemas import RerankResult, Usage, utcnow
from .service import Reranker
from .store.journal import GroupCommitWriter, SessionJournal
from .store.store import Store

MAX_ATTEMPTS = 5


async def run_session(
    store: Store,
    writer: GroupCommitWriter,
    reranker: Reranker,
    request_id: str,
    owner: str,
    lease_s: float,
) -> tuple[RerankResult, WalkOutcome, int] | None:
    """Returns (result, outcome, calls served from the store), or None when the session is
    finished already or another live worker holds it."""
    claim = await store.claim(request_id, owner, lease_s)
    if claim is None:
        return None
    if claim.attempts > MAX_ATTEMPTS:
        # a request that crashed the walk this often is failed with the upstream order
        result = RerankResult(
            request_id=claim.request.request_id, status="failed",
            ranking=[c.item_id for c in claim.request.candidates], path=[], llm_calls=0,
            usage=Usage(), model=reranker.model, prompt_version=reranker.prompt_version,
            latency_ms=0, reason=f"the walk failed {MAX_ATTEMPTS} times; upstream order returned",
            completed_at=utcnow(), policy="none", replay_of=claim.replay_of)
        await store.complete(claim.session_id, owner, result)
        return None
    recorded = [call for step in claim.steps for call in step.calls]
    journal = SessionJournal(writer, claim.session_id,
                             persisted=max((s.step for s in claim.steps), default=0))
    result, outcome = await reranker.run(claim.request, journal=journal, recorded=recorded,
                                         live=True, replay_of=claim.replay_of)
    if not await store.complete(claim.session_id, owner, result, reranker.run_config(claim.request)):
        return None  # the lease was lost meanwhile; the holder stores its own result
    return result, outcome, len(recorded)
