"""Reading a chat completion's JSON without the client's model tree: any body gives the fields
the call records or MalformedCompletion, never another exception."""

from __future__ import annotations

import json

import pytest
from cases import cases
from hypothesis import given
from hypothesis import strategies as st

from worker.engine.steps import LLMCall
from worker.policies.chat import MalformedCompletion, completion_fields

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
completions = st.fixed_dictionaries(
    {
        "choices": st.lists(
            st.fixed_dictionaries(
                {"message": st.fixed_dictionaries({"content": st.none() | st.text() | json_values})},
                optional={"finish_reason": st.none() | st.sampled_from(["stop", "length"]) | json_values},
            ),
            max_size=2,
        )
        | json_values
    },
    optional={
        "usage": st.fixed_dictionaries(
            {"prompt_tokens": st.integers(0, 10**6) | json_values},
            optional={"completion_tokens": st.integers(0, 10**6)},
        )
        | json_values,
        "model": st.none() | st.text() | json_values,
    },
)


@cases(300)
@given(
    st.one_of(
        completions.map(lambda c: json.dumps(c).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),  # integers beyond 64 bits too
        st.binary(),
    )
)
def test_any_body_gives_the_fields_or_names_what_is_wrong(body: bytes) -> None:
    try:
        fields = completion_fields(body)
    except MalformedCompletion as exc:
        assert str(exc).startswith("the LLM server's 200 answer is not a chat completion")
        return
    LLMCall(messages=[], **fields)  # what the call records is a valid call
    answer = json.loads(body)
    assert fields["raw"] == (answer["choices"][0]["message"].get("content") or "")
    assert fields["prompt_tokens"] == int((answer.get("usage") or {}).get("prompt_tokens") or 0)


def test_a_lone_surrogate_in_the_answer_is_kept_for_the_call_to_replace() -> None:
    body = b'{"choices": [{"message": {"content": "a\\ud800b"}, "finish_reason": "stop"}]}'
    fields = completion_fields(body)
    assert fields["raw"] == "a\ud800b" and fields["finish_reason"] == "stop"
    assert LLMCall(messages=[], **fields).raw_replaced == [[1, 0xD800]]


def test_the_error_names_the_field_as_the_server_spells_it() -> None:
    with pytest.raises(MalformedCompletion, match=r"usage\.prompt_tokens: Input should be a valid integer"):
        completion_fields(b'{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": "many"}}')
