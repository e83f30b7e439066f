"""The audit API's OpenAPI 3.1 document, written out by hand so it states exactly the bounds the
code enforces (filters.py) and needs no extra dependency; a test checks it lists every route."""

from __future__ import annotations

from typing import Any

from ..engine.nodes import node_names
from ..status import Status
from .filters import DEFAULT_PAGE, DEFAULT_TOP_K, MAX_PAGE, MAX_TOP_K


def _q(name: str, description: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
        **extra,
    }


TEXT = {"type": "string", "minLength": 1, "maxLength": 256}
LIST_PARAMETERS = [
    _q(
        "request_id",
        "only these sessions (repeatable)",
        {"type": "array", "items": TEXT, "maxItems": 1000},
        explode=True,
    ),
    _q(
        "since",
        "received at or after (ISO 8601; naive times are UTC)",
        {"type": "string", "format": "date-time"},
    ),
    _q("until", "received before (ISO 8601)", {"type": "string", "format": "date-time"}),
    _q("user", "user_id", TEXT),
    _q("status", "session status", {"type": "string", "enum": [s.value for s in Status]}),
    _q("node", "the walk visited this node", {"type": "string"}),  # enum: node_names(), at call time
    _q("goal", "case-insensitive substring of the goal", TEXT),
    _q("model", "model that served the session", TEXT),
    _q("prompt_version", "prompt set version, e.g. default-0123456789ab", TEXT),
    _q("item", "an item_id that ended in the top `top_k` of the final ranking", TEXT),
    _q(
        "top_k",
        "with `item`",
        {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K},
    ),
    _q("replay_of", "replays of this original request_id", TEXT),
    _q(
        "replays",
        "include, exclude or only replays",
        {"type": "string", "enum": ["include", "exclude", "only"], "default": "include"},
    ),
    _q("order", "by (received_at, id)", {"type": "string", "enum": ["desc", "asc"], "default": "desc"}),
    _q("limit", "page size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}),
    _q("cursor", "`next_cursor` of the previous page (same order)", {"type": "string", "maxLength": 200}),
]
ERRORS = {
    "400": {
        "description": "invalid input",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "401": {
        "description": "no valid bearer token",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
    "503": {
        "description": "the trace store could not be read",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    },
}
STR_LIST = {"type": "array", "items": {"type": "string"}}
NULLABLE_STR_LIST = {"type": ["array", "null"], "items": {"type": "string"}}
SUMMARY = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "user_id": {"type": "string"},
        "goal": {"type": "string"},
        "status": {"type": "string"},
        "model": {"type": ["string", "null"]},
        "prompt_version": {"type": ["string", "null"]},
        "policy": {"type": ["string", "null"]},
        "path": NULLABLE_STR_LIST,
        "final_ranking": NULLABLE_STR_LIST,
        "reason": {"type": ["string", "null"]},
        "llm_calls": {"type": ["integer", "null"]},
        "prompt_tokens": {"type": ["integer", "null"]},
        "completion_tokens": {"type": ["integer", "null"]},
        "latency_ms": {"type": ["integer", "null"]},
        "received_at": {"type": "string", "format": "date-time"},
        "completed_at": {"type": ["string", "null"], "format": "date-time"},
        "replay_of": {"type": ["string", "null"]},
        "replay_mode": {"type": ["string", "null"]},
    },
}
STEP = {
    "type": "object",
    "properties": {
        "step": {"type": "integer"},
        "node": {"type": "string"},
        "policy": {"type": "string"},
        "ranking": {**NULLABLE_STR_LIST, "description": "the list this step added to the pool"},
        "removed": {**NULLABLE_STR_LIST, "description": "the list Backward dropped"},
        "next_node": {"type": ["string", "null"]},
        "offered": STR_LIST,
        "pool_size": {"type": "integer"},
        "notes": {**STR_LIST, "description": "repairs and fallbacks"},
        "problem": {"type": ["string", "null"]},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "latency_ms": {"type": "number"},
        "retries": {"type": "integer"},
        "call_count": {"type": "integer"},
        "before": {**STR_LIST, "description": "the current list when the step started"},
        "after": {**STR_LIST, "description": "the current list once the step was taken"},
    },
}
CALL = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": {"type": "object"}, "description": "the prompt sent"},
        "response_format": {"type": ["object", "null"]},
        "raw": {"type": ["string", "null"], "description": "the model's answer"},
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "latency_ms": {"type": "number"},
        "retries": {"type": "integer"},
        "error": {"type": ["string", "null"]},
    },
}


def _list_parameters() -> list[dict[str, Any]]:
    """LIST_PARAMETERS with the node enum read from the registry now (it may have grown)."""
    return [
        {**p, "schema": {**p["schema"], "enum": list(node_names())}} if p["name"] == "node" else p
        for p in LIST_PARAMETERS
    ]


def openapi_document() -> dict[str, Any]:
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm4rerank audit API",
            "version": "1",
            "description": "Read-only access to stored LLM4Rerank sessions and their node steps. "
            "Every /api/ route needs `Authorization: Bearer <token>` (tokens from "
            "LLM4RERANK_AUDIT_TOKENS). Only GET and HEAD exist.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                },
                "SessionSummary": SUMMARY,
                "Page": {
                    "type": "object",
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/SessionSummary"}},
                        "next_cursor": {"type": ["string", "null"]},
                        "limit": {"type": "integer"},
                    },
                },
                "Step": STEP,
                "Session": {
                    "allOf": [
                        {"$ref": "#/components/schemas/SessionSummary"},
                        {
                            "type": "object",
                            "properties": {
                                "request": {"type": "object", "description": "the request as received"},
                                "upstream": {**STR_LIST, "description": "the candidates in upstream order"},
                                "steps": {"type": "array", "items": {"$ref": "#/components/schemas/Step"}},
                                "attempts": {"type": "integer"},
                                "source_topic": {"type": ["string", "null"]},
                                "source_partition": {"type": ["integer", "null"]},
                                "source_offset": {"type": ["integer", "null"]},
                            },
                        },
                    ]
                },
                "Call": CALL,
                "Nodes": {
                    "type": "object",
                    "properties": {
                        "nodes": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {"type": "string", "enum": ["aspect", "functional"]},
                                    "short": {"type": "string"},
                                    "colour": {"type": "string"},
                                },
                            },
                        }
                    },
                },
                "StepCalls": {
                    "type": "object",
                    "properties": {
                        "request_id": {"type": "string"},
                        "step": {"type": "integer"},
                        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}},
                    },
                },
            },
        },
        "paths": {
            "/api/sessions": {
                "get": {
                    "summary": "Search sessions (keyset paging by received_at, id)",
                    "security": secured,
                    "parameters": _list_parameters(),
                    "responses": {
                        "200": {
                            "description": "one page",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Page"}}
                            },
                        },
                        **ERRORS,
                    },
                }
            },
            "/api/nodes": {
                "get": {
                    "summary": "The graph's nodes: name, kind (aspect or functional), short label, colour",
                    "security": secured,
                    "responses": {
                        "200": {
                            "description": "the node registry",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Nodes"}}
                            },
                        },
                        **ERRORS,
                    },
                }
            },
            "/api/sessions/{request_id}": {
                "get": {
                    "summary": "One session with every step and the list after each step",
                    "security": secured,
                    "parameters": [{"name": "request_id", "in": "path", "required": True, "schema": TEXT}],
                    "responses": {
                        "200": {
                            "description": "the session",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Session"}}
                            },
                        },
                        "404": {"description": "no such session"},
                        **ERRORS,
                    },
                }
            },
            "/api/sessions/{request_id}/steps/{step}/calls": {
                "get": {
                    "summary": "The LLM calls of one step: raw prompts and raw answers",
                    "security": secured,
                    "parameters": [
                        {"name": "request_id", "in": "path", "required": True, "schema": TEXT},
                        {
                            "name": "step",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 9999},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the calls",
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/StepCalls"}}
                            },
                        },
                        "404": {"description": "no such step"},
                        **ERRORS,
                    },
                }
            },
            "/api/session": {
                "get": {
                    "summary": "One session (or, with step, that step's calls) by a query parameter: "
                    "works for every request_id, also `.`, `..` or ids containing "
                    "/steps/N/calls",
                    "security": secured,
                    "parameters": [
                        {"name": "request_id", "in": "query", "required": True, "schema": TEXT},
                        {
                            "name": "step",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 9999},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "the session or the step's calls",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Session"},
                                            {"$ref": "#/components/schemas/StepCalls"},
                                        ]
                                    }
                                }
                            },
                        },
                        "404": {"description": "no such session or step"},
                        **ERRORS,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness (no data, no token)",
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}
            },
            "/": {
                "get": {
                    "summary": "The trace viewer (static page; asks for a token)",
                    "responses": {"200": {"description": "HTML"}},
                }
            },
        },
    }
