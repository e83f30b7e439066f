"""Prometheus metrics of the worker, served on LLM4RERANK_METRICS_PORT."""

from __future__ import annotations

import asyncio

from prometheus_client import Counter, Gauge, Histogram

from ..engine.walk import WalkOutcome
from ..schemas import RerankResult

REQUESTS = Counter("llm4rerank_requests_total", "Finished requests by status", ["status"])
INVALID = Counter("llm4rerank_invalid_requests_total", "Requests sent to the DLQ", ["code"])
DUPLICATES = Counter("llm4rerank_duplicate_requests_total", "request_ids seen again")
WALK_SECONDS = Histogram(
    "llm4rerank_walk_seconds", "Walk latency", buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)
)
STEPS = Histogram("llm4rerank_walk_steps", "Node steps per walk", buckets=(1, 2, 3, 4, 5, 6, 8, 10, 20))
NODE_VISITS = Counter("llm4rerank_node_visits_total", "Node visits", ["node"])
REPAIRS = Counter("llm4rerank_repairs_total", "Answers that needed a repair or a re-ask")
FALLBACKS = Counter("llm4rerank_fallbacks_total", "Walks finished by the heuristic policy")
LLM_CALLS = Counter("llm4rerank_llm_calls_total", "LLM calls", ["outcome"])
LLM_SECONDS = Histogram(
    "llm4rerank_llm_call_seconds",
    "LLM call latency (retries included)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TOKENS = Counter("llm4rerank_tokens_total", "Tokens used", ["kind"])
IN_FLIGHT = Gauge("llm4rerank_sessions_in_flight", "Walks running in this process")
CONSUMER_LAG = Gauge("llm4rerank_consumer_lag", "Messages behind the high watermark", ["partition"])
RESUMED = Counter("llm4rerank_sessions_resumed_total", "Sessions resumed from stored steps")
PUBLISHED = Counter("llm4rerank_results_published_total", "Results acknowledged by Kafka")
CRASHES = Counter(
    "llm4rerank_walk_crashes_total",
    "Walks that raised (not outages); each releases its session's lease and is retried",
)
CRASH_FAILED = Counter(
    "llm4rerank_sessions_failed_by_crashes_total",
    "Sessions failed after crashing the walk LLM4RERANK_CRASH_LIMIT times",
)
STEP_COMMITS = Histogram(
    "llm4rerank_step_commit_size", "Steps per group commit", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 500)
)
LOOP_LAG = Histogram(
    "llm4rerank_event_loop_lag_seconds",
    "How late the event loop ran a timer: blocking code or a machine short of CPU",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BACKPRESSURE = Gauge("llm4rerank_backpressure", "1 while a dependency is down", ["dependency"])


def observe(result: RerankResult, outcome: WalkOutcome, replayed_calls: int) -> None:
    """Count one finished walk (steps served from a recording are not counted as new calls)."""
    REQUESTS.labels(str(result.status)).inc()
    WALK_SECONDS.observe(result.latency_ms / 1000)
    STEPS.observe(len(outcome.steps))
    if "+" in outcome.policy:
        FALLBACKS.inc()
    seen_calls = 0
    for step in outcome.steps:
        NODE_VISITS.labels(step.node).inc()
        if step.notes or step.problem:
            REPAIRS.inc()
        for call in step.calls:
            seen_calls += 1
            if seen_calls <= replayed_calls:
                continue
            LLM_CALLS.labels("error" if call.error else "ok").inc()
            LLM_SECONDS.observe(call.latency_ms / 1000)
            TOKENS.labels("prompt").inc(call.prompt_tokens)
            TOKENS.labels("completion").inc(call.completion_tokens)


async def watch_loop_lag(interval_s: float = 0.1) -> None:
    """Observe how late each timer fires: the latency every request in the process pays on top
    of its own work, which no per-request figure shows on its own."""
    loop = asyncio.get_running_loop()
    while True:
        start = loop.time()
        await asyncio.sleep(interval_s)
        LOOP_LAG.observe(max(0.0, loop.time() - start - interval_s))
