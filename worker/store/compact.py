"""Compact step columns: a step row stays well under PostgreSQL's ~2 KB TOAST threshold, below
which PostgreSQL 15 compresses nothing (whatever `toast_tuple_target` says), so the bytes saved
have to be saved in the encoding itself, in forms still readable in SQL.

- a list of item ids (`ranking`, `removed`) sharing a prefix is stored front-coded:
  {"prefix": "shop-", "ids": ["a1", "b2"]} (SQL: `ranking->>'prefix' || id`);
- repair counts leave out zero counts ({} when every count is zero).

Rows stored before keep plain lists and full counts and read as they are: a stored list is never
an object, and filling zeros back into full counts changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from ..schemas import RepairSummary

ID_LISTS = ("ranking", "removed")
REPAIR_FIELDS = tuple(RepairSummary.model_fields)
MIN_PREFIX = 2


def pack_ids(ids: Any) -> Any:
    """A list of ids front-coded when they share a prefix and that is shorter, else as it is."""
    if not isinstance(ids, list) or len(ids) < 2 or not all(isinstance(i, str) for i in ids):
        return ids
    first, last = min(ids), max(ids)  # the prefix all share is the one these two share
    n = next(
        (i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last))
    )
    prefix = first[:n]
    if len(prefix) < MIN_PREFIX:
        return ids
    coded = {"prefix": prefix, "ids": [i[len(prefix) :] for i in ids]}
    return coded if len(orjson.dumps(coded)) < len(orjson.dumps(ids)) else ids


def unpack_ids(value: Any) -> Any:
    if isinstance(value, dict) and isinstance(value.get("ids"), list):
        prefix = value.get("prefix", "")
        return [prefix + i for i in value["ids"]]
    return value


def pack_repair(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {k: v for k, v in value.items() if not (k in REPAIR_FIELDS and v == 0)}


def unpack_repair(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {**dict.fromkeys(REPAIR_FIELDS, 0), **value}


def pack_step(row: dict[str, Any]) -> dict[str, Any]:
    """A step row's columns in their compact form (the row is changed in place and returned)."""
    for name in ID_LISTS:
        if name in row:
            row[name] = pack_ids(row[name])
    if "repair" in row:
        row["repair"] = pack_repair(row["repair"])
    return row


def unpack_step(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored step row (either form) with its columns as the StepRecord wrote them."""
    out = dict(row)
    for name in ID_LISTS:
        if name in out:
            out[name] = unpack_ids(out[name])
    if "repair" in out:
        out["repair"] = unpack_repair(out["repair"])
    return out
