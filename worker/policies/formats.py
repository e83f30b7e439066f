"""The answer's JSON Schema and the `response_format` shape each server family accepts.

A schema cannot force a permutation (llama.cpp does not enforce `uniqueItems`), so the shapes do
what a grammar can: the `list` shape fixes the length and the item values; the `keys` shape asks
one required key per candidate (every candidate named exactly once by construction) holding its
position, so the only possible defect is two candidates sharing a position.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

SETTING = "LLM4RERANK_LLM_STRUCTURED"
MODES = ("json_schema", "tgi", "json_object", "none")


def answer_schema(
    labels: list[str], offered: tuple[str, ...], *, ranking: bool, aliases: bool, shape: str = "list"
) -> dict[str, Any]:
    """The object an aspect node (ranking=True) or Backward (ranking=False) answers."""
    properties: dict[str, Any] = {"next_node": {"type": "string", "enum": list(offered)}}
    required = ["next_node"]
    n = len(labels)
    if ranking and shape == "keys":
        position = {"type": "integer", "minimum": 1, "maximum": n}
        properties = {
            "positions": {
                "type": "object",
                "properties": {label: position for label in labels},
                "required": list(labels),
                "additionalProperties": False,
            },
            **properties,
        }
        required = ["positions", "next_node"]
    elif ranking:
        item: dict[str, Any] = (
            {"type": "integer", "minimum": 1, "maximum": n}
            if aliases
            else {"type": "string", "enum": list(labels)}
        )
        properties = {
            "ranking": {"type": "array", "items": item, "minItems": n, "maxItems": n, "uniqueItems": True},
            **properties,
        }
        required = ["ranking", "next_node"]
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def response_format(schema: dict[str, Any], mode: str, name: str) -> dict[str, Any] | None:
    """`schema` in the request shape of one server family; None for free text."""
    if mode == "json_schema":  # OpenAI's form: vLLM, SGLang, llama.cpp's server
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    if mode == "tgi":  # TGI's grammar form (its older alias for the type is "json")
        return {"type": "json_object", "value": schema}
    if mode == "json_object":  # llama-cpp-python: json_object with the schema beside it
        return {"type": "json_object", "schema": schema}
    if mode == "none":
        return None
    raise ConfigError(f"unknown answer format {mode!r}; set {SETTING} to one of {list(MODES)}")


def probe_format(mode: str) -> dict[str, Any] | None:
    """The tiny format the startup check sends: the answer object for two candidates."""
    schema = answer_schema(["1", "2"], ("stop",), ranking=True, aliases=True)
    return response_format(schema, mode, "probe")
