"""The replay report and the evaluation judge a stored session the same way: the same MAD and
alpha-NDCG for the same request and ranking, read back from PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

import pytest

from worker.audit.db import read_only_engine
from worker.audit.filters import TraceFilters
from worker.audit.queries import TraceQueries
from worker.config import Settings
from worker.evaluation.candidates import Case
from worker.evaluation.report import case_metrics
from worker.evaluation.runner import Record
from worker.replay.replayer import replay_recorded, select_sessions
from worker.replay.report import build_report
from worker.schemas import RerankRequest

pytestmark = pytest.mark.integration


async def test_replay_report_and_evaluation_give_the_same_mad_for_stored_sessions(populated: Any) -> None:
    settings = Settings()
    engine = read_only_engine(populated.db.url)
    try:
        comparisons = await replay_recorded(
            settings, select_sessions(TraceQueries(engine), TraceFilters(replays="exclude"))
        )
    finally:
        await engine.dispose()
    report = build_report("recorded", comparisons, default_aspects=settings.aspects)
    by_id = {c.original.request_id: c for c in comparisons}
    checked = 0
    for entry in report["per_session"]:
        stored = by_id[entry["request_id"]]
        request = RerankRequest.model_validate(
            {**stored.request, "aspects": {**settings.aspects, **(stored.request.get("aspects") or {})}}
        )
        ranking = stored.original.ranking
        evaluated = case_metrics(
            Record("stored", "-", request.request_id, ranking), Case(request, ranking[0]), [10]
        )
        if "mad" in entry["metrics"]:
            assert entry["metrics"]["mad"][0] == evaluated["MAD"]
            checked += 1
        else:
            assert math.isnan(evaluated["MAD"])
        if "alpha_ndcg@10" in entry["metrics"]:
            assert entry["metrics"]["alpha_ndcg@10"][0] == evaluated["alpha-NDCG@10"]
    assert checked == len(populated.request_ids)
