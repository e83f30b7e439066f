"""Prompt templates from `prompts/<set>/` (shipped as the package data `worker.prompts`, found through
importlib.resources: config.PACKAGED_PROMPTS), validated at load, laid out for vLLM's automatic
prefix caching.

Everything constant within a session (instructions, goal, user, candidates, output format) is
rendered into the first message and stays byte-identical across steps; the pool, the node's
focus and the offered next nodes come last.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import orjson

from ..errors import ConfigError
from ..schemas import AspectConfig, RerankRequest
from .measures import group_of
from .nodes import ASPECT_NODES, BACKWARD, FUNCTIONAL, WalkPlan

HISTORY_SHOWN = 10
FIELD_MAX_CHARS = 500
# Unicode categories Cc, Zl, Zp and Cs, and the bidirectional overrides and isolates (they
# reorder what a reader, or a model, sees).
BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str, max_chars: int = FIELD_MAX_CHARS, cut: list[int] | None = None) -> str:
    """One line of prompt text: every control character, line or paragraph separator (CR, LF,
    VT, FF, U+0085, U+2028, U+2029, ...) and bidi override becomes a space, runs of whitespace
    become one space, and text over `max_chars` is cut with an ellipsis (its length is appended
    to `cut`). Request text can then never start a line of its own in a prompt."""
    original = len(text)
    if original > 4 * max_chars:  # do not normalise megabytes only to cut them
        text = text[: 4 * max_chars]
    text = " ".join(BREAKS.sub(" ", text).split())
    if len(text) > max_chars or original > 4 * max_chars:
        if cut is not None:
            cut.append(original)
        text = text[: max_chars - 1] + "…"
    return text


@dataclass
class Cleaner:
    """clean_text with one session's cap, remembering what it cut (for the step's notes)."""

    max_chars: int = FIELD_MAX_CHARS
    cut: list[int] = field(default_factory=list)

    def __call__(self, value: Any) -> Any:
        if isinstance(value, str):
            return clean_text(value, self.max_chars, self.cut)
        if isinstance(value, list):
            return [self(v) for v in value]
        return value

    def features(self, features: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in features.items():
            out.setdefault(self(key), self(value))
        return out


# What the renderer provides to each template (SessionPrompts below), and what a template must use
# so that nothing the model needs is dropped. Keys not listed here are optional extra files.
SESSION_VALUES = frozenset({"goal", "user", "candidates", "columns", "nodes", "format"})
PROVIDED: dict[str, frozenset[str]] = {
    "system": SESSION_VALUES,
    "step": SESSION_VALUES | {"pool", "node", "focus", "offered"},
    "candidate": frozenset({"alias", "item_id", "features"}),
    "pool_line": frozenset({"step", "node", "ranking"}),
    "withdrawn_line": frozenset({"step", "node", "ranking"}),
    "reask": frozenset({"problem", "n", "offered"}),
    "reask_node": frozenset({"problem", "n", "offered"}),
    "format_json": frozenset(),
    "format_keys": frozenset(),
    "format_text": frozenset(),
}
ASPECT_VALUES = frozenset({"attribute", "groups", "seen"})
REQUIRED_FILES = (
    "system",
    "step",
    "candidate",
    "pool_line",
    "reask",
    "reask_node",
    "format_json",
    "format_text",
)
REQUIRED: dict[str, frozenset[str]] = {
    "step": frozenset({"pool", "focus", "offered"}),
    "candidate": frozenset({"features"}),
    "pool_line": frozenset({"ranking"}),
    "withdrawn_line": frozenset({"ranking"}),
    "reask": frozenset({"problem"}),
    "reask_node": frozenset({"problem", "offered"}),
}
# Each must appear in the system or the step template.
REQUIRED_SESSION = frozenset({"goal", "user", "candidates", "format"})


def validate_templates(folder: Path, texts: dict[str, str], manifest: dict[str, Any]) -> None:
    """Refuse a prompt set that would fail, or silently drop information, at render time: every
    registered node needs its focus template, every placeholder must be one the renderer
    provides, and the ones carrying the request must be used. Errors name the file."""
    problems: list[str] = []
    for key in (*REQUIRED_FILES, *(f"nodes/{n}" for n in (*ASPECT_NODES, BACKWARD))):
        if key not in texts:
            problems.append(
                f"{folder / key}.txt is missing (every registered node and every "
                f"part of the prompt needs its template)"
            )
    for key, text in texts.items():
        template = Template(text)
        path = f"{folder / key}.txt"
        if not template.is_valid():
            problems.append(f"{path}: a `$` that starts no placeholder (write `$$` for a dollar)")
            continue
        used = set(template.get_identifiers())
        if key.startswith("nodes/"):
            node = key.removeprefix("nodes/")
            provided: frozenset[str] = frozenset() if node in FUNCTIONAL else ASPECT_VALUES
            spec = ASPECT_NODES.get(node)
            required = (
                frozenset({"attribute"}) if spec is not None and spec.needs_attribute else (frozenset())
            )
        else:
            provided = PROVIDED.get(key, frozenset())
            required = REQUIRED.get(key, frozenset())
            if key == "candidate":
                required |= {"alias" if manifest.get("id_style", "alias") == "alias" else "item_id"}
        for name in sorted(used - provided):
            problems.append(
                f"{path}: unknown placeholder ${name} (the renderer provides "
                f"{', '.join(sorted(provided)) or 'none here'})"
            )
        for name in sorted(required - used):
            problems.append(f"{path}: placeholder ${name} is missing")
    session = set(Template(texts.get("system", "")).get_identifiers()) | set(
        Template(texts.get("step", "")).get_identifiers()
    )
    for name in sorted(REQUIRED_SESSION - session):
        problems.append(
            f"{folder / 'system'}.txt and {folder / 'step'}.txt: placeholder ${name} is missing from both"
        )
    if problems:
        raise ConfigError(f"prompt set {folder.name!r} is invalid: " + "; ".join(problems))


@dataclass(frozen=True)
class PromptSet:
    """One directory of templates; `version` hashes every file so results name what produced them."""

    name: str
    texts: dict[str, str]
    manifest: dict[str, Any]
    version: str

    @classmethod
    def load(cls, root: Path, name: str) -> PromptSet:
        folder = root / name
        if not folder.is_dir():
            known = (
                sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file())
                if (root.is_dir())
                else []
            )
            raise ConfigError(
                f"prompt set {name!r} not found in {root}; set LLM4RERANK_PROMPTS to one of {known}"
            )
        texts = {
            str(p.relative_to(folder).with_suffix("")): p.read_text("utf-8").rstrip("\n")
            for p in sorted(folder.rglob("*.txt"))
        }
        try:
            manifest_text = (folder / "manifest.json").read_text("utf-8")
            manifest = orjson.loads(manifest_text)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ConfigError(f"{folder / 'manifest.json'}: {exc}") from exc
        validate_templates(folder, texts, manifest)
        digest = hashlib.sha256(manifest_text.encode())
        for key in sorted(texts):
            digest.update(f"\0{key}\0{texts[key]}".encode())
        return cls(name, texts, manifest, f"{name}-{digest.hexdigest()[:12]}")

    @property
    def uses_aliases(self) -> bool:
        return bool(self.manifest.get("id_style", "alias") == "alias")

    def has_node(self, node: str) -> bool:
        return f"nodes/{node}" in self.texts

    def render(self, key: str, **values: Any) -> str:
        return Template(self.texts[key]).substitute(values)


@dataclass
class SessionPrompts:
    """Renders one session's prompts; the constant part is rendered once and reused."""

    prompts: PromptSet
    request: RerankRequest
    plan: WalkPlan
    structured: bool
    shape: str = "list"
    field_max_chars: int = FIELD_MAX_CHARS
    clean: Cleaner = field(init=False)
    _prefix: str = field(init=False, default="")
    _values: dict[str, str] = field(init=False, default_factory=dict)
    alias_of: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        ps, req = self.prompts, self.request
        clean = self.clean = Cleaner(self.field_max_chars)
        self.alias_of = {c.item_id: i + 1 for i, c in enumerate(req.candidates)}
        feature_style = ps.manifest.get("feature_style", "compact")
        rows = [{"score": c.score, **clean.features(c.features)} for c in req.candidates]
        columns = columns_of(rows)
        lines = [
            ps.render(
                "candidate",
                alias=i + 1,
                item_id=clean(c.item_id),
                features=render_features(row, feature_style, columns),
            )
            for i, (c, row) in enumerate(zip(req.candidates, rows, strict=True))
        ]
        self._values = {
            "goal": clean(req.goal),
            "user": render_user(req, feature_style, clean),
            "candidates": "\n".join(lines),
            "columns": " | ".join(columns),
            "nodes": ", ".join(self.plan.aspect_names),
            "format": ps.render(self._format_key()),
        }
        self._prefix = ps.render("system", **self._values)

    def _format_key(self) -> str:
        if not self.structured:
            return "format_text"
        return (
            "format_keys" if self.shape == "keys" and "format_keys" in self.prompts.texts else ("format_json")
        )

    def label(self, item_id: str) -> str:
        """How an item is named in prompts: its alias (1..N) or its (cleaned) item_id."""
        if self.prompts.uses_aliases:
            return str(self.alias_of[item_id])
        return str(self.clean(item_id))

    @property
    def notes(self) -> list[str]:
        """What the step should say about the prompt: request text that was cut."""
        if not self.clean.cut:
            return []
        return [
            f"prompt: {len(self.clean.cut)} request field(s) cut to {self.field_max_chars} "
            f"characters (longest was {max(self.clean.cut)})"
        ]

    def messages(
        self,
        node: str,
        pool: list[tuple[str, list[str]]],
        offered: tuple[str, ...],
        withdrawn: list[tuple[str, list[str]]] | None = None,
    ) -> list[dict[str, str]]:
        """The node's prompt; lists Backward withdrew follow the pool, marked as withdrawn."""
        ps = self.prompts
        pool_text = "\n".join(
            ps.render("pool_line", step=i + 1, node=n, ranking=self._ranking_text(r))
            for i, (n, r) in enumerate(pool)
        ) or ps.manifest.get("pool_empty", "(empty)")
        if withdrawn:
            key = "withdrawn_line" if "withdrawn_line" in ps.texts else "pool_line"
            pool_text += "\n" + "\n".join(
                ps.render(key, step="-", node=n, ranking=self._ranking_text(r)) for n, r in withdrawn
            )
        step = ps.render(
            "step",
            **self._values,
            pool=pool_text,
            node=node,
            focus=self.focus(node),
            offered=", ".join(offered),
        )
        out = [{"role": "system", "content": self._prefix}] if self._prefix else []
        out.append({"role": "user", "content": step})
        return out

    def reask(self, problem: str, node: str, offered: tuple[str, ...]) -> dict[str, str]:
        """A corrective follow-up; at Backward it asks for a node only."""
        key = "reask_node" if node in FUNCTIONAL else "reask"
        return {
            "role": "user",
            "content": self.prompts.render(
                key, problem=problem, n=len(self.request.candidates), offered=", ".join(offered)
            ),
        }

    def focus(self, node: str) -> str:
        if node in FUNCTIONAL:
            return self.prompts.render(f"nodes/{node}")
        aspect = self.plan.aspects.get(node)
        if not self.prompts.has_node(node):
            raise ConfigError(f"prompt set {self.prompts.name!r} has no template nodes/{node}.txt")
        values: dict[str, str] = {}
        if aspect is not None:
            clean = self.clean
            values = {
                "attribute": clean(aspect.attribute),
                "groups": clean(describe_groups(self.request, aspect, clean)),
                "seen": clean(
                    ", ".join(sorted(clean(v) for v in history_values(self.request, aspect.attribute)))
                )
                or "none",
            }
        return self.prompts.render(f"nodes/{node}", **values)

    def _ranking_text(self, ranking: list[str]) -> str:
        labels = [self.label(i) for i in ranking]
        return ",".join(labels) if self.prompts.uses_aliases else "[" + ", ".join(labels) + "]"


def columns_of(rows: list[dict[str, Any]]) -> list[str]:
    """Feature names in first-seen order, skipping those no row has a value for."""
    seen: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                seen.setdefault(key)
    return list(seen)


def render_features(features: dict[str, Any], style: str, columns: list[str] | None = None) -> str:
    """`json` (the paper's), `compact` (key=value; ...) or `columns` (values under a header)."""
    clean = {k: v for k, v in features.items() if v is not None}
    if style == "json":
        return orjson.dumps(clean).decode()
    if style == "columns":
        return " | ".join(_compact(clean.get(c, ""), "/") for c in columns or list(clean))
    return "; ".join(f"{k}={_compact(v, '|')}" for k, v in clean.items())


def _compact(value: Any, joiner: str) -> str:
    if isinstance(value, list):
        return (
            ",".join(_compact(v, joiner) for v in value)
            if joiner == "/"
            else joiner.join(_compact(v, joiner) for v in value)
        )
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return clean_text(str(value), len(str(value)) + 1).replace(";", ",").replace("|", "/")


def render_user(request: RerankRequest, style: str, clean: Cleaner | None = None) -> str:
    clean = clean or Cleaner()
    user = request.user
    head = render_features(
        {"user_id": clean(user.user_id), **clean.features(user.features)},
        "compact" if style == "columns" else style,
    )
    recent = user.history[-HISTORY_SHOWN:]
    if not recent:
        return head
    if style == "json":
        shown = [{"item_id": clean(h.item_id), **clean.features(h.features)} for h in recent]
        return f"{head}, recent history: {orjson.dumps(shown).decode()}"
    rows = [clean.features(h.features) or {"item_id": clean(h.item_id)} for h in recent]
    columns = columns_of(rows)
    return (
        head
        + f"\nRecent history (oldest first; {' | '.join(columns)}):\n"
        + "\n".join("- " + render_features(row, style, columns) for row in rows)
    )


def describe_groups(request: RerankRequest, aspect: AspectConfig, clean: Cleaner | None = None) -> str:
    if aspect.split_at is not None:
        return f"below {aspect.split_at:g}; {aspect.split_at:g} and above"
    clean = clean or Cleaner()
    values = {group_of(c.features.get(aspect.attribute), aspect) for c in request.candidates}
    return ", ".join(sorted({clean(v) for v in values if v is not None}))


def history_values(request: RerankRequest, attribute: str) -> set[str]:
    seen: set[str] = set()
    for item in request.user.history:
        value = item.features.get(attribute)
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                seen.add(str(v))
    return seen
