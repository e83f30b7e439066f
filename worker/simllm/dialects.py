"""Which `response_format` shapes each real server family accepts, and how it refuses the rest,
so that tests against the SIMULATED server see the answers real servers give:

- vllm: OpenAI's `json_schema`, and `json_object` (extra keys such as `value` or `schema` are
  ignored, so the answer is JSON but the schema is not enforced).
- tgi: only its grammar form `{"type": "json_object" | "json", "value": schema}`; OpenAI's form
  is a 422 (the body cannot be deserialised: no `value`).
- llama-cpp-python: `json_object` (with an optional `schema`); `json_schema` is a 500 whose body
  is a pydantic validation error.
- llama.cpp: `json_schema` and `json_object` (with an optional `schema`); other types are a 400.
"""

from __future__ import annotations

from typing import Any

DIALECTS = ("vllm", "tgi", "llama-cpp-python", "llama.cpp")


def check_format(dialect: str, fmt: dict[str, Any] | None) -> tuple[int, dict[str, Any]] | None:
    """None when the server takes `fmt`; else the (status, body) it answers."""
    if not fmt or fmt.get("type") == "text":
        return None
    kind = fmt.get("type")
    if dialect == "tgi":
        if kind in ("json", "json_object", "regex") and "value" in fmt:
            return None
        return 422, {
            "error": "Failed to deserialize the JSON body into the target type: "
            "response_format: missing field `value`",
            "error_type": "validation",
        }
    if dialect == "llama-cpp-python":
        if kind == "json_object":
            return None
        return 500, {
            "detail": [
                {
                    "type": "literal_error",
                    "loc": ["body", "response_format", "type"],
                    "msg": "Input should be 'text' or 'json_object'",
                    "input": kind,
                }
            ]
        }
    if dialect == "llama.cpp":
        if kind in ("json_schema", "json_object"):
            return None
        return 400, {
            "error": {
                "code": 400,
                "type": "invalid_request_error",
                "message": f'response_format type must be one of "text" or "json_object", but got: {kind}',
            }
        }
    if kind in ("json_schema", "json_object"):  # vllm
        return None
    return 400, {
        "object": "error",
        "type": "BadRequestError",
        "code": 400,
        "message": f"1 validation error: response_format.type: Input should be 'text', "
        f"'json_object', 'json_schema' or 'structural_tag' (got {kind!r})",
    }


def enforced_schema(dialect: str, fmt: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema the server enforces for an accepted format (None: free text or any JSON)."""
    if not fmt:
        return None
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema")
    if dialect == "tgi":
        return fmt.get("value")
    if dialect in ("llama-cpp-python", "llama.cpp"):
        return fmt.get("schema")
    return None


def wants_json(fmt: dict[str, Any] | None) -> bool:
    return fmt is not None and bool(fmt) and fmt.get("type") in ("json_schema", "json_object", "json")
