"""Turn what a model said into a permutation of the candidates and a next node, noting every repair.

Tolerates what real models emit: prose around the answer, a reasoning section closed by
`</think>`, full-width or other Unicode digits, item_ids instead of aliases, duplicates, unknown
ids, missing ids, a node name in another case or with punctuation.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from .nodes import node_names

MAX_REPAIR_SHARE = 0.5  # the parser's default; the policy passes LLM4RERANK_LLM_MAX_REPAIR_SHARE
_TOKEN = re.compile(r"[^\s,;\[\]\"'`()]+")
_LIST = re.compile(r"\[([^\[\]]*)\]")
_WORD = re.compile(r"[a-z_]+")


@dataclass
class Parsed:
    """A parsed answer: `ranking` is a full permutation, or None when the answer was unusable."""

    ranking: list[str] | None
    next_node: str | None
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    repair: Repair | None = None


@dataclass
class Repair:
    """How far an answer was from a permutation: the ranking keeps `kept` of the model's items in
    its order; `appended` were missing, `duplicates` and `unknown` were dropped, `ties` shared a
    position (keys shape) and kept the previous order among themselves."""

    kept: int = 0
    appended: int = 0
    duplicates: int = 0
    unknown: int = 0
    ties: int = 0

    @property
    def was_permutation(self) -> bool:
        return not (self.appended or self.duplicates or self.unknown or self.ties)

    def share(self, n: int) -> float:
        """The share of positions the repair decided rather than the model."""
        return (self.appended + self.ties) / max(n, 1)


def normalise(text: str, notes: list[str] | None = None) -> str:
    """Drop a reasoning section and map every Unicode digit and full-width sign to ASCII."""
    notes = notes if notes is not None else []
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
        notes.append("dropped a reasoning section ending in </think>")
    folded = unicodedata.normalize("NFKC", text)
    out = "".join(str(unicodedata.digit(ch)) if ch.isdigit() and not ch.isascii() else ch for ch in folded)
    if out != text:
        notes.append("mapped full-width or non-ASCII digits and signs to ASCII")
    return out


def parse_answer(
    raw: str,
    *,
    candidates: list[str],
    previous: list[str],
    offered: tuple[str, ...],
    expect_ranking: bool,
    aliases: bool,
    max_repair_share: float = MAX_REPAIR_SHARE,
) -> Parsed:
    """Parse one answer. `previous` is the list that missing items are appended from; an answer
    whose repair decides more than `max_repair_share` of the positions is unusable."""
    notes: list[str] = []
    ties = 0
    text = normalise(raw or "", notes)
    obj = _find_json(text)
    if obj is not None:
        if not text.strip().startswith("{") or not text.strip().endswith("}"):
            notes.append("ignored text around the JSON answer")
        tokens = _json_tokens(obj)
        if tokens is None:
            by_key = _json_positions(obj, previous, candidates, aliases)
            if by_key is not None:
                tokens, ties = by_key
                if ties:
                    notes.append(f"{ties} item(s) shared a position; kept the previous order")
        node_text = _json_node(obj)
        if tokens is None and expect_ranking:
            notes.append("json answer without a ranking")
    else:
        tokens, node_text = _text_tokens(text, candidates, aliases)
    next_node = match_node(node_text, offered, notes) if node_text is not None else None
    if next_node is None and expect_ranking is False:
        next_node = _node_anywhere(text, offered, notes)
    if not expect_ranking:
        if next_node is None:
            return Parsed(None, None, notes, problem="no next node named")
        return Parsed(None, next_node, notes)
    if next_node is None and tokens is not None:
        next_node = _node_anywhere(_after_list(text), offered, notes)
    if tokens is None:
        return Parsed(None, next_node, notes, problem="no list of candidates found")
    ranking, fix = repair(tokens, candidates, previous, aliases, notes)
    fix.ties = ties
    n = len(candidates)
    if fix.kept == 0 or fix.share(n) > max_repair_share:
        return Parsed(
            None,
            next_node,
            notes,
            repair=fix,
            problem=(
                f"only {fix.kept} of {n} candidates recognised ({fix.appended} missing, "
                f"{fix.duplicates} duplicate(s), {fix.ties} tie(s)); at most "
                f"{max_repair_share:.0%} may be repaired"
            ),
        )
    return Parsed(ranking, next_node, notes, repair=fix)


def repair(
    tokens: list[str], candidates: list[str], previous: list[str], aliases: bool, notes: list[str]
) -> tuple[list[str], Repair]:
    """Keep known ids once in their order, drop unknown ones, append missing in previous order."""
    by_id = {c: c for c in candidates}
    by_folded = {c.casefold(): c for c in candidates}
    out: list[str] = []
    seen: set[str] = set()
    unknown: list[str] = []
    duplicates: list[str] = []
    for token in tokens:
        item = _resolve(token, candidates, by_id, by_folded, aliases)
        if item is None:
            unknown.append(token)
        elif item in seen:
            duplicates.append(token)
        else:
            seen.add(item)
            out.append(item)
    known = len(out)
    missing = [c for c in previous if c not in seen]
    if unknown:
        notes.append(f"dropped {len(unknown)} unknown id(s): {', '.join(unknown[:10])}")
    if duplicates:
        notes.append(f"dropped {len(duplicates)} duplicate(s): {', '.join(duplicates[:10])}")
    if missing:
        notes.append(f"appended {len(missing)} missing item(s) in the previous order")
    return out + missing, Repair(
        kept=known, appended=len(missing), duplicates=len(duplicates), unknown=len(unknown)
    )


def _resolve(
    token: str,
    candidates: list[str],
    by_id: dict[str, str],
    by_folded: dict[str, str],
    aliases: bool,
) -> str | None:
    token = token.strip(".:#*")
    if aliases and token.isdecimal() and token.isascii():
        index = int(token)
        if 1 <= index <= len(candidates):
            return candidates[index - 1]
    if token in by_id:
        return by_id[token]
    return by_folded.get(token.casefold())


def match_node(text: str, offered: tuple[str, ...], notes: list[str]) -> str | None:
    """Match a node name in any case, with punctuation or a ' node' suffix around it."""
    words: list[str] = _WORD.findall(text.casefold().replace("-", "_"))
    for word in words:
        if word in offered:
            if word != text.strip():
                notes.append(f"next node {text.strip()!r} read as {word!r}")
            return word
    for word in words:
        if word in node_names():
            notes.append(f"next node {word!r} is not on offer")
            return None
    return None


def _node_anywhere(text: str, offered: tuple[str, ...], notes: list[str]) -> str | None:
    """The last offered node name mentioned anywhere (models often end with their choice)."""
    folded = text.casefold()
    best, best_at = None, -1
    for node in offered:
        at = folded.rfind(node)
        if at > best_at:
            best, best_at = node, at
    if best is not None:
        notes.append(f"next node {best!r} found in prose")
    return best


def _find_json(text: str) -> dict[str, Any] | None:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict) and ({"ranking", "positions", "next_node", "next"} & set(obj)):
            return obj
    return None


def _json_tokens(obj: dict[str, Any]) -> list[str] | None:
    for key in ("ranking", "ranked", "list", "items"):
        value = obj.get(key)
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, str):
            return _TOKEN.findall(value)
    return None


def _json_positions(
    obj: dict[str, Any], previous: list[str], candidates: list[str], aliases: bool
) -> tuple[list[str], int] | None:
    """The keys shape {"positions": {label: position}}: labels by position, ties in the previous
    order; returns the labels and how many shared a position with an earlier one."""
    value = obj.get("positions")
    if not isinstance(value, dict):
        return None
    order = {c: i for i, c in enumerate(previous)}
    rows = []
    for label, position in value.items():
        if isinstance(position, bool) or not isinstance(position, int | float | str):
            continue
        try:
            pos = float(position)
        except ValueError:
            continue
        item = (
            candidates[int(label) - 1]
            if aliases and str(label).isdecimal() and (1 <= int(label) <= len(candidates))
            else str(label)
        )
        rows.append((pos, order.get(item, len(order)), str(label)))
    rows.sort()
    positions = [r[0] for r in rows]
    ties = len(positions) - len(set(positions))
    return [r[2] for r in rows], ties


def _json_node(obj: dict[str, Any]) -> str | None:
    for key in ("next_node", "next", "node"):
        value = obj.get(key)
        if isinstance(value, str):
            return value
    return None


def _text_tokens(text: str, candidates: list[str], aliases: bool) -> tuple[list[str] | None, str | None]:
    """The bracketed list with the most recognisable ids, and what follows it up to a line end."""
    known = set(candidates) | {c.casefold() for c in candidates}
    best: tuple[int, list[str], int] | None = None
    for match in _LIST.finditer(text):
        tokens = [t.strip(".:#*") for t in _TOKEN.findall(match.group(1))]
        score = sum(
            1
            for t in tokens
            if (aliases and t.isdecimal() and t.isascii() and 1 <= int(t) <= len(candidates))
            or t in known
            or t.casefold() in known
        )
        if score and (best is None or score > best[0]):
            best = (score, tokens, match.end())
    if best is None:
        return None, None
    tail = text[best[2] :].lstrip(" ;:,-")
    return best[1], tail.split("\n", 1)[0] if tail.strip() else None


def _after_list(text: str) -> str:
    end = text.rfind("]")
    return text[end + 1 :] if end >= 0 else text
