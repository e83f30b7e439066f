"""Reads a node prompt back into a NodeAsk, using the same template files that rendered it."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from ..engine.nodes import ASPECT_NODES, BACKWARD, WalkPlan
from ..engine.prompts import PromptSet
from ..engine.steps import NodeAsk
from ..schemas import AspectConfig, HistoryItem, Item, Options, RerankRequest, User

VALUE_PATTERNS = {"alias": r"\d+", "step": r"\d+", "item_id": r"[^\s,]+"}


@functools.lru_cache(maxsize=256)
def template_regex(line: str) -> re.Pattern[str]:
    """A template line as a regex: literal text escaped, each $name a named lazy group."""
    parts = re.split(r"\$\{?(\w+)\}?", line)
    out, seen = [], set()
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out.append(re.escape(part))
        elif part in seen:
            out.append(".*?")
        else:
            seen.add(part)
            out.append(f"(?P<{part}>{VALUE_PATTERNS.get(part, '.*?')})")
    return re.compile("^" + "".join(out) + "$", re.MULTILINE)


class UnreadablePrompt(ValueError):
    pass


@dataclass
class PromptReader:
    prompts: PromptSet

    def __post_init__(self) -> None:
        self._lines = {key: self._var_lines(text) for key, text in self.prompts.texts.items()}

    @staticmethod
    def _var_lines(text: str) -> dict[str, re.Pattern[str]]:
        found: dict[str, re.Pattern[str]] = {}
        for line in text.splitlines():
            for name in re.findall(r"\$\{?(\w+)\}?", line):
                found.setdefault(name, template_regex(line))
        return found

    def value(self, text: str, key: str, name: str) -> str | None:
        pattern = self._lines.get(key, {}).get(name)
        match = pattern.search(text) if pattern else None
        return match.group(name) if match else None

    def read(self, messages: list[dict[str, Any]]) -> NodeAsk:
        """The ask behind a node prompt; a corrective re-ask is answered like its first prompt."""
        main = "\n".join(str(m.get("content", "")) for m in messages[:2])
        node = self._one(main, "node")
        if node not in (*ASPECT_NODES, BACKWARD):
            raise UnreadablePrompt(f"unknown node {node!r}")
        goal = self._one(main, "goal")
        offered = tuple(n.strip() for n in self._one(main, "offered").rstrip(".").split(","))
        enabled = tuple(
            n.strip()
            for n in (self.value(main, "system", "nodes") or self.value(main, "step", "nodes") or "").split(
                ","
            )
        )
        items, labels = self._candidates(main)
        aspects: dict[str, AspectConfig | None] = {}
        for name in enabled:
            if name in ASPECT_NODES and ASPECT_NODES[name].needs_attribute:
                aspects[name] = self._aspect(main, name)
            elif name in ASPECT_NODES:
                aspects[name] = None
        seen = self._seen(main, node)
        history = [
            HistoryItem(item_id=f"h{i}", features={a.attribute: v})
            for i, v in enumerate(seen)
            for a in aspects.values()
            if a is not None
        ][:200]
        request = RerankRequest.model_construct(
            request_id="sim",
            goal=goal,
            user=User.model_construct(user_id="sim", features={}, history=history),
            candidates=items,
            aspects={},
            options=Options(),
        )
        pool = self._pool(main, labels)
        plan = WalkPlan(aspects=aspects, max_steps=99, deadline_ms=1)
        visited = tuple(n for n, _ in pool)
        ask = NodeAsk(request, plan, node, len(pool) + 1, pool, offered, visited, 1, 0.0)
        return ask

    def _one(self, text: str, name: str) -> str:
        value = self.value(text, "step", name) or self.value(text, "system", name)
        if value is None:
            raise UnreadablePrompt(f"no {name} in the prompt")
        return value.strip()

    def _candidates(self, text: str) -> tuple[list[Item], dict[str, str]]:
        pattern = template_regex(self.prompts.texts["candidate"])
        columns = None
        if self.prompts.manifest.get("feature_style") == "columns":
            columns = (self.value(text, "system", "columns") or "").split(" | ")
        items: list[Item] = []
        labels: dict[str, str] = {}
        for match in pattern.finditer(text):
            groups = match.groupdict()
            label = cast(str, groups.get("alias") or groups.get("item_id"))  # the template has one of them
            features = parse_features(groups.get("features", ""), columns)
            score = features.pop("score", None)
            items.append(Item.model_construct(item_id=label, score=_number(score), features=features))
            labels[label] = label
        if len(items) < 2:
            raise UnreadablePrompt("fewer than 2 candidates in the prompt")
        return items, labels

    def _aspect(self, text: str, name: str) -> AspectConfig | None:
        """Attribute and groups come from the node's focus clause, which only its own step shows;
        other steps get a placeholder the reranker does not use."""
        key = f"nodes/{name}"
        attribute = self.value(text, key, "attribute")
        if attribute is None:
            return AspectConfig.model_construct(attribute="?", split_at=None)
        groups = self.value(text, key, "groups") or ""
        split = re.match(r"below (-?[\d.eE+]+)", groups)
        return AspectConfig.model_construct(
            attribute=attribute.strip('"'), split_at=float(split.group(1)) if split else None
        )

    def _seen(self, text: str, node: str) -> list[str]:
        seen = self.value(text, f"nodes/{node}", "seen")
        if not seen or seen == "none":
            return []
        return [s.strip() for s in seen.split(",")]

    def _pool(self, text: str, labels: dict[str, str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
        pattern = template_regex(self.prompts.texts["pool_line"])
        pool = []
        for match in pattern.finditer(text):
            if match.group("node") not in (*ASPECT_NODES, BACKWARD):
                continue  # a withdrawn list, or not a pool line
            ranking = [t for t in re.split(r"[\s,\[\]]+", match.group("ranking")) if t in labels]
            if len(ranking) == len(labels):
                pool.append((match.group("node"), tuple(ranking)))
        return tuple(pool)


def parse_features(text: str, columns: list[str] | None = None) -> dict[str, Any]:
    """Features as rendered in any style: JSON, `key=value; ...`, or values under `columns`."""
    text = text.strip()
    if columns is not None:
        values = text.split(" | ")
        return {
            c: (v.split(",") if "," in v else _number(v, keep=True))
            for c, v in zip(columns, values, strict=False)
            if v != ""
        }
    if text.startswith("{"):
        try:
            return dict(orjson.loads(text))
        except orjson.JSONDecodeError:
            return {}
    out: dict[str, Any] = {}
    for part in text.split("; "):
        key, sep, value = part.partition("=")
        if sep:
            out[key] = value.split("|") if "|" in value else _number(value, keep=True)
    return out


def _number(value: Any, keep: bool = False) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value if keep else None


def load_readers(root: Path) -> list[PromptReader]:
    return [
        PromptReader(PromptSet.load(root, p.name))
        for p in sorted(root.iterdir())
        if (p / "manifest.json").exists()
    ]
