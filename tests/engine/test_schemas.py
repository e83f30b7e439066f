"""The wire contract: request validation names the field, and schemas/ matches the models."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest
from engine_kit import EXAMPLES, REPO, request_dict

from worker.config import Settings
from worker.errors import RequestError
from worker.schemas import Limits, RerankResult, Source, dead_letter, json_schemas, parse_request
from worker.service import limits_of

BASE = request_dict(random.Random(7), n=20, rid="r-42")


def changed(edit: Callable[[dict[str, Any]], Any]) -> bytes:
    obj = copy.deepcopy(BASE)
    edit(obj)
    return json.dumps(obj).encode()


def rejected(raw: bytes, limits: Limits | None = None) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(raw, limits)
    return info.value


def test_the_base_request_is_valid() -> None:
    request = parse_request(json.dumps(BASE))
    assert request.request_id == "r-42" and len(request.candidates) == 20


def test_every_example_request_is_valid() -> None:
    lines = [line for line in EXAMPLES.read_bytes().splitlines() if line.strip()]
    assert len(lines) >= 10
    assert len({parse_request(line).request_id for line in lines}) == len(lines)


CASES: list[tuple[str, Callable[[dict[str, Any]], Any], str, str]] = [
    ("missing request_id", lambda o: o.pop("request_id"), "schema", "request_id"),
    ("empty request_id", lambda o: o.update(request_id=""), "schema", "request_id"),
    ("blank request_id", lambda o: o.update(request_id="   "), "schema", "request_id"),
    ("missing goal", lambda o: o.pop("goal"), "schema", "goal"),
    ("empty goal", lambda o: o.update(goal=""), "schema", "goal"),
    ("blank goal", lambda o: o.update(goal=" \n\t"), "schema", "goal"),
    ("no candidates", lambda o: o.update(candidates=[]), "schema", "candidates"),
    ("one candidate", lambda o: o.update(candidates=o["candidates"][:1]), "schema", "candidates"),
    (
        "101 candidates",
        lambda o: o.update(
            candidates=[{"item_id": f"i{i}", "features": {"genre": "x", "year": 1}} for i in range(101)]
        ),
        "schema",
        "candidates",
    ),
    (
        "duplicate item_id",
        lambda o: o["candidates"].append(copy.deepcopy(o["candidates"][3])),
        "schema",
        "duplicate item_id",
    ),
    ("empty item_id", lambda o: o["candidates"][0].update(item_id=""), "schema", "candidates.0.item_id"),
    (
        "aspect attribute no candidate has",
        lambda o: o["aspects"].update(diversity={"attribute": "colour"}),
        "schema",
        "aspects.diversity.attribute",
    ),
    ("unknown top-level field", lambda o: o.update(priority=3), "schema", "priority"),
    ("unknown user field", lambda o: o["user"].update(age=3), "schema", "user.age"),
    ("missing user", lambda o: o.pop("user"), "schema", "user"),
    ("max_steps out of range", lambda o: o.update(options={"max_steps": 0}), "schema", "options.max_steps"),
    ("deadline too short", lambda o: o.update(options={"deadline_ms": 5}), "schema", "options.deadline_ms"),
    (
        "feature value of a wrong type",
        lambda o: o["candidates"][2]["features"].update(genre={"a": 1}),
        "schema",
        "candidates.2.features.genre",
    ),
]


@pytest.mark.parametrize(("edit", "code", "names"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_validation_rejects_and_names_the_field(
    edit: Callable[[dict[str, Any]], Any], code: str, names: str
) -> None:
    error = rejected(changed(edit))
    assert error.code == code
    assert names in error.message, error.message


def test_candidate_count_limit_is_configurable() -> None:
    raw = changed(lambda o: o.update(candidates=o["candidates"][:5]))
    assert len(parse_request(raw, Limits(max_candidates=5)).candidates) == 5
    error = rejected(raw, Limits(max_candidates=4))
    assert "candidates" in error.message and "at most 4" in error.message


def test_history_limit() -> None:
    raw = changed(lambda o: o["user"].update(history=o["user"]["history"] * 3))  # 15 items
    assert parse_request(raw, Limits(max_history=15))
    error = rejected(raw, Limits(max_history=14))
    assert error.code == "schema" and "user.history" in error.message and "14" in error.message


@pytest.mark.parametrize("where", ["user.features", "candidates[4].features", "user.history[1].features"])
def test_feature_map_limit(where: str) -> None:
    many = {f"k{i}": i for i in range(9)}

    def edit(o: dict[str, Any]) -> None:
        if where == "user.features":
            o["user"]["features"] = many
        elif where.startswith("candidates"):
            o["candidates"][4]["features"] = {**o["candidates"][4]["features"], **many}
        else:
            o["user"]["history"][1]["features"] = many

    raw = changed(edit)
    assert parse_request(raw, Limits(max_features=12))
    error = rejected(raw, Limits(max_features=8))
    assert where in error.message, error.message


def test_payload_over_the_byte_limit() -> None:
    raw = json.dumps(BASE).encode()
    assert parse_request(raw, Limits(max_payload_bytes=len(raw)))
    error = rejected(raw, Limits(max_payload_bytes=len(raw) - 1))
    assert error.code == "payload_too_large" and "payload" in error.message


def test_settings_feed_the_limits() -> None:
    limits = limits_of(Settings(max_candidates=7, max_history=3, max_features=5, max_payload_bytes=2048))
    assert limits == Limits(max_candidates=7, max_history=3, max_features=5, max_payload_bytes=2048)
    assert Limits().max_candidates == 100


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"request_id": "r-\xff\xfe", "goal": "x"}', "not_utf8"),
        (b"\x80\x81\x82", "not_utf8"),
        (b"not json at all", "not_json"),
        (b'{"request_id": "r-1", "goal": ', "not_json"),
        (b"", "not_json"),
        (b"[1, 2, 3]", "schema"),
        (b'"a string"', "schema"),
    ],
)
def test_non_utf8_and_non_json_payloads(raw: bytes, code: str) -> None:
    error = rejected(raw)
    assert error.code == code
    assert "payload" in error.message


def test_error_details_list_each_field() -> None:
    error = rejected(changed(lambda o: (o.pop("goal"), o.update(extra=1))))
    locs = {tuple(d["loc"]) for d in error.details}
    assert ("goal",) in locs and ("extra",) in locs


def test_dead_letter_keeps_the_payload() -> None:
    raw = b"\xff not utf-8"
    letter = dead_letter(raw, rejected(raw), Source(topic="rerank.requests", partition=0, offset=3))
    assert letter.payload_encoding == "base64" and letter.error.code == "not_utf8"
    raw = changed(lambda o: o.update(goal=""))
    letter = dead_letter(raw, rejected(raw), Source(topic="rerank.requests"))
    assert letter.payload_encoding == "utf-8" and letter.request_id == "r-42"


# ---------------------------------------------------------------------------------------------
# exported JSON Schemas


def test_schemas_folder_matches_the_models() -> None:
    """Drift test: `llm4rerank schemas` output must be committed after a model change."""
    exported = json_schemas()
    on_disk = {
        p.name.removesuffix(".schema.json"): json.loads(p.read_text("utf-8"))
        for p in (REPO / "schemas").glob("*.schema.json")
    }
    assert set(on_disk) == set(exported)
    for name, schema in exported.items():
        assert on_disk[name] == json.loads(json.dumps(schema)), (
            f"schemas/{name}.schema.json is stale: run `llm4rerank schemas`"
        )


def test_request_schema_names_the_contract_fields() -> None:
    schema = json_schemas()["rerank-request"]
    assert set(schema["required"]) == {"request_id", "goal", "user", "candidates"}
    assert schema["additionalProperties"] is False
    result = json_schemas()["rerank-result"]
    for name in (
        "request_id",
        "status",
        "ranking",
        "path",
        "llm_calls",
        "usage",
        "model",
        "prompt_version",
        "latency_ms",
        "reason",
        "completed_at",
    ):
        assert name in result["properties"]


def _validator(name: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema", reason="add jsonschema to the dev extras")
    schema = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_example_requests_validate_against_the_exported_schema() -> None:
    validator = _validator("rerank-request")
    for line in EXAMPLES.read_bytes().splitlines():
        if line.strip():
            assert not list(validator.iter_errors(json.loads(line)))
    assert not list(validator.iter_errors(BASE))


def test_exported_schema_rejects_what_the_models_reject() -> None:
    validator = _validator("rerank-request")
    for edit in (
        lambda o: o.pop("goal"),
        lambda o: o.update(priority=1),
        lambda o: o.update(candidates=o["candidates"][:1]),
        lambda o: o.update(request_id=""),
    ):
        assert list(validator.iter_errors(json.loads(changed(edit))))


def test_a_result_validates_against_the_exported_schema() -> None:
    validator = _validator("rerank-result")
    result = RerankResult.model_validate(
        {
            "request_id": "r-1",
            "status": "ok",
            "ranking": ["a", "b"],
            "path": ["accuracy", "stop"],
            "llm_calls": 1,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
            "model": "m",
            "prompt_version": "default-x",
            "latency_ms": 5,
            "reason": None,
            "completed_at": "2026-01-01T00:00:00Z",
        }
    )
    assert not list(validator.iter_errors(result.model_dump(mode="json")))
