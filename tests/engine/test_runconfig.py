"""The run configuration and status values as typed contracts: stored run_config records of every
earlier shape still load, overrides are validated, and status words stay the same on the wire."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from worker.config import Settings
from worker.runconfig import RunConfig
from worker.schemas import RerankResult
from worker.status import FINISHED, Status
from worker.store import tables

# as stored since the record was introduced (before output sizing was kept, migration 0005)
FIRST_SHAPE: dict[str, Any] = {
    "policy": "llm",
    "prompts": "default",
    "prompt_version": "default-0123456789ab",
    "model": "m",
    "llm_structured": "json_schema",
    "llm_reasks": 1,
    "max_steps": 5,
    "deadline_ms": 30000,
    "aspects": {
        "accuracy": None,
        "diversity": {"attribute": "genre"},
        "fairness": {"attribute": "year", "split_at": 1996},
    },
}
SIZED_SHAPE: dict[str, Any] = {
    **FIRST_SHAPE,
    "llm_answer_shape": "keys",
    "llm_max_repair_share": 0.25,
    "llm_window": 12,
    "llm_window_step": 6,
    "llm_context_tokens": 8192,
    "llm_tokenizer": None,
}


@pytest.mark.parametrize(
    "stored",
    [
        FIRST_SHAPE,
        SIZED_SHAPE,
        {**SIZED_SHAPE, "retired_field": 1},
        {"policy": "heuristic", "max_steps": 3, "deadline_ms": 500},
    ],
)
def test_stored_records_of_every_shape_load(stored: dict[str, Any]) -> None:
    config = RunConfig.model_validate(orjson.loads(orjson.dumps(stored)))  # as JSON from the store
    plan = config.plan()
    assert plan.max_steps == stored["max_steps"] and plan.deadline_ms == stored["deadline_ms"]
    assert list(plan.aspects) == list(stored.get("aspects", {}))
    assert config.llm_answer_shape == stored.get("llm_answer_shape", "list")
    assert RunConfig.model_validate(config.model_dump(mode="json")) == config


@pytest.mark.parametrize(
    "bad",
    [
        {"llm_structured": "xml"},
        {"llm_answer_shape": "table"},
        {"max_steps": 0},
        {"policy": "oracle"},
        {"deadline_ms": None},
    ],
)
def test_a_record_with_a_wrong_value_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RunConfig.model_validate({**SIZED_SHAPE, **bad})


BASE = Settings(_env_file=None)  # type: ignore[call-arg]


@given(window=st.integers(-5, 100), step=st.integers(-5, 50), share=st.floats(-1, 2, allow_nan=False))
def test_settings_for_validates_what_it_applies(window: int, step: int, share: float) -> None:
    """Values a deployment's settings would refuse are refused here too (model_copy took them)."""
    config = RunConfig.model_validate(
        {**SIZED_SHAPE, "llm_window": window, "llm_window_step": step, "llm_max_repair_share": share}
    )
    try:
        applied = config.settings_for(BASE)
    except ValidationError:
        with pytest.raises(ValidationError):
            Settings(
                _env_file=None,
                llm_window=window,
                llm_window_step=step,  # type: ignore[call-arg]
                llm_max_repair_share=share,
            )
        return
    applied_sizes = (applied.llm_window, applied.llm_window_step, applied.llm_max_repair_share)
    assert applied_sizes == (window, step, share)
    assert applied.prompts == "default" and applied.llm_model == "m"
    assert applied.llm_answer_shape == "keys" and applied.llm_context_tokens == 8192


def test_with_overrides_keeps_unset_values_and_types_them() -> None:
    base = Settings(_env_file=None, llm_model="a", max_steps=7)  # type: ignore[call-arg]
    assert base.with_overrides(llm_model=None) is base
    changed = base.with_overrides(llm_tokenizer="tok/tokenizer.json", prompts="paper")
    assert changed.llm_tokenizer == Path("tok/tokenizer.json") and changed.prompts == "paper"
    assert (changed.llm_model, changed.max_steps) == ("a", 7)
    with pytest.raises(ValidationError):
        base.with_overrides(max_steps=0)


def test_status_words_are_unchanged() -> None:
    assert [s.value for s in Status] == ["pending", "running", "ok", "degraded", "failed"]
    assert (tables.PENDING, tables.RUNNING) == ("pending", "running")
    assert tables.FINISHED == FINISHED == ("ok", "degraded", "failed")
    wire = {
        "request_id": "r",
        "status": "degraded",
        "ranking": ["a"],
        "path": ["stop"],
        "llm_calls": 0,
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "model": "m",
        "prompt_version": "v",
        "latency_ms": 1,
        "reason": "x",
        "completed_at": "2026-01-01T00:00:00Z",
        "policy": "heuristic",
    }
    result = RerankResult.model_validate_json(orjson.dumps(wire))
    assert result.status is Status.DEGRADED
    assert orjson.loads(result.model_dump_json())["status"] == "degraded"
    assert orjson.loads(orjson.dumps(result.model_dump()))["status"] == "degraded"
    schema = RerankResult.model_json_schema()["properties"]["status"]
    assert schema["enum"] == ["ok", "degraded", "failed"]
