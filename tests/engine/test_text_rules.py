"""Which characters a request may hold: the pydantic models and the exported JSON Schema agree,
every refusal names the field, and prompts never carry a line break from request text."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from cases import cases
from hypothesis import given
from hypothesis import strategies as st

from worker.engine.prompts import clean_text
from worker.errors import RequestError
from worker.samples import sample_requests
from worker.schemas import json_schemas, parse_request

BASE = sample_requests(1, seed=3, prefix="t", candidates=4)[0]
VALIDATOR = jsonschema.Draft202012Validator(json_schemas()["rerank-request"])
any_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=0x10FFFF, blacklist_categories=()), min_size=1, max_size=30
)


def with_value(where: str, value: str) -> dict:
    body = copy.deepcopy(BASE)
    if where == "goal":
        body["goal"] = "g " + value
    elif where == "request_id":
        body["request_id"] = "r" + value
    elif where == "title":
        body["candidates"][0]["features"]["title"] = value
    elif where == "key":
        body["candidates"][0]["features"]["k" + value] = 1
    elif where == "item_id":
        body["candidates"][0]["item_id"] = "i" + value
    return body


@pytest.mark.parametrize("where", ["goal", "request_id", "title", "key", "item_id"])
@cases(80)
@given(value=any_text)
def test_models_and_json_schema_agree(where: str, value: str) -> None:
    body = with_value(where, value)
    raw = json.dumps(body, ensure_ascii=True).encode()
    try:
        parse_request(raw)
        accepted, code = True, None
    except RequestError as exc:
        accepted, code = False, exc.code
    if code == "not_json":  # a lone surrogate: refused before the schema
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in value)
        return
    assert accepted == VALIDATOR.is_valid(body), (where, value, code)


def parse_error(raw: bytes) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(raw)
    return info.value


@pytest.mark.parametrize(
    ("where", "char"),
    [
        ("goal", "\x00"),
        ("goal", "\x1b"),
        ("goal", "\x85"),
        ("request_id", "\t"),
        ("request_id", "\u2028"),
        ("title", "\x0b"),
        ("key", "\n"),
        ("item_id", "\x7f"),
    ],
)
def test_a_refused_character_names_the_field(where: str, char: str) -> None:
    error = parse_error(json.dumps(with_value(where, char)).encode())
    assert error.code == "control_character"
    field = {
        "title": "candidates.0.features",
        "key": "candidates.0.features",
        "item_id": "candidates.0.item_id",
    }.get(where, where)
    assert error.message.startswith(field) and f"U+{ord(char):04X}" in error.message


@cases(200)
@given(value=any_text, cap=st.integers(16, 60))
def test_prompt_text_is_one_capped_line(value: str, cap: int) -> None:
    cut: list[int] = []
    text = clean_text(value * 3, cap, cut)
    assert len(text) <= cap
    assert not any(c in text for c in "\r\n\v\f\x85\u2028\u2029\x00\x1b")
    assert text == text.strip() and "  " not in text
