"""The LLM policy: render the node's prompt, ask the model, parse and repair, re-ask if unusable.

Prompts are sized before they are sent: the session's prompt must fit the model's context with
room for the answer and one bounded re-ask. Feature text is shortened first; a list that still
does not fit, or is longer than `window`, is reranked in sliding windows the way RankGPT does
(from the bottom of the previous list to the top, `window` items at a time, moving `step`), each
window a recorded call of the same node step with the pool and Goal restricted to its items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..engine.heuristics import next_by_goal
from ..engine.nodes import BACKWARD
from ..engine.parse import MAX_REPAIR_SHARE, Parsed, parse_answer
from ..engine.prompts import FIELD_MAX_CHARS, PromptSet, SessionPrompts
from ..engine.steps import LLMCall, NodeAnswer, NodeAsk, RepairCount
from ..engine.tokens import EstimateCounter, TokenCounter, prompt_tokens
from ..errors import DeadlineExceeded
from ..schemas import RerankRequest
from .chat import ChatTransport
from .formats import answer_schema, response_format

EXCERPT_CHARS = 120
SHORTEN_LEVELS = (None, 48, 16)  # longest feature string kept: as given, then shorter


@dataclass(frozen=True)
class LLMOptions:
    """How the policy sizes and shapes its requests (see the LLM4RERANK_LLM_* settings)."""

    mode: str = "json_schema"
    shape: str = "list"
    context_tokens: int = 4096
    max_tokens: int = 512
    max_repair_share: float = MAX_REPAIR_SHARE
    window: int = 20
    window_step: int = 10
    counter: TokenCounter = field(default_factory=EstimateCounter)
    field_max_chars: int = FIELD_MAX_CHARS  # longest request text of one field in a prompt


def answer_tokens(n: int, shape: str, ranking: bool) -> int:
    """Room for the answer: each item as digits, a separator and spacing, plus the node."""
    if not ranking:
        return 48
    per = 2 * len(str(n)) + 10 if shape == "keys" else len(str(n)) + 3
    return n * per + 48


def excerpt(raw: str, limit: int = EXCERPT_CHARS) -> str:
    """The head and tail of an answer, never the whole of a long one."""
    raw = " ".join(raw.split())
    if len(raw) <= limit:
        return raw
    head = limit * 2 // 3
    return f"{raw[:head]} … {raw[-(limit - head) :]}"


def shorten(request: RerankRequest, chars: int | None) -> RerankRequest:
    """The request with every feature string cut to `chars` and lists to 3 values."""
    if chars is None:
        return request

    def cut(value: Any) -> Any:
        if isinstance(value, str):
            return value if len(value) <= chars else value[: chars - 1] + "…"
        if isinstance(value, list):
            return [cut(v) for v in value[:3]]
        return value

    candidates = [
        c.model_copy(update={"features": {k: cut(v) for k, v in c.features.items()}})
        for c in request.candidates
    ]
    history = [
        h.model_copy(update={"features": {k: cut(v) for k, v in h.features.items()}})
        for h in request.user.history
    ]
    user = request.user.model_copy(
        update={"features": {k: cut(v) for k, v in request.user.features.items()}, "history": history}
    )
    return request.model_copy(update={"candidates": candidates, "user": user})


@dataclass
class _Plan:
    """How one session's prompts are sized: the feature level, and windows or not."""

    level: int
    windowed: bool
    note: str


class LLMPolicy:
    """One per walk (it caches the session's constant prompt prefix); the transport is shared.

    An endpoint that stays down is retried by the transport until the deadline; the deadline then
    ends the node with its calls so far, and the walk falls back to the heuristic policy.
    """

    name = "llm"

    def __init__(
        self,
        chat: ChatTransport,
        prompts: PromptSet,
        *,
        structured: bool = True,
        reasks: int = 1,
        options: LLMOptions | None = None,
    ) -> None:
        self.chat = chat
        self.prompts = prompts
        self.structured = structured
        self.reasks = reasks
        self.options = options or LLMOptions(mode="json_schema" if structured else "none")
        self._sessions: dict[tuple[Any, ...], SessionPrompts] = {}
        self._plan: _Plan | None = None
        self._request: RerankRequest | None = None

    # ------------------------------------------------------------------ sizing

    def session(self, ask: NodeAsk, items: tuple[str, ...] | None = None, level: int = 0) -> SessionPrompts:
        """The prompts for the whole list (items=None) or for one window's items."""
        if self._request is not ask.request:
            self._sessions, self._plan, self._request = {}, None, ask.request
        key = (items, level)
        if key not in self._sessions:
            request = shorten(ask.request, SHORTEN_LEVELS[level])
            if items is not None:
                keep = set(items)
                request = request.model_copy(
                    update={"candidates": [c for c in request.candidates if c.item_id in keep]}
                )
            self._sessions[key] = SessionPrompts(
                self.prompts,
                request,
                ask.plan,
                self.structured,
                self.options.shape,
                self.options.field_max_chars,
            )
        return self._sessions[key]

    def _needed(self, ask: NodeAsk, items: tuple[str, ...] | None, level: int) -> int:
        """Prompt tokens at the fullest this session can get (a pool of max_steps lists and a
        re-ask), plus the answer: what must fit the context."""
        session = self.session(ask, items, level)
        n = len(items) if items is not None else len(ask.request.candidates)
        labels = [c.item_id for c in session.request.candidates]
        pool = [("accuracy", labels)] * max(ask.plan.max_steps, 1)
        messages = session.messages("accuracy", pool, ask.offered)
        reask = 2 * (EXCERPT_CHARS + 200) // 3
        return (
            prompt_tokens(self.options.counter, messages) + reask + answer_tokens(n, self.options.shape, True)
        )

    def plan(self, ask: NodeAsk) -> _Plan:
        """Decided once per session so every step's prefix stays byte-identical (prefix cache)."""
        if self._request is ask.request and self._plan is not None:
            return self._plan
        context, n = self.options.context_tokens, len(ask.request.candidates)
        if n <= self.options.window:
            for level in range(len(SHORTEN_LEVELS)):
                needed = self._needed(ask, None, level)
                if needed <= context:
                    note = (
                        ""
                        if level == 0
                        else (
                            f"feature text cut to {SHORTEN_LEVELS[level]} characters to fit the "
                            f"context of {context} tokens"
                        )
                    )
                    self._plan = _Plan(level, False, note)
                    return self._plan
        probe = tuple(c.item_id for c in ask.request.candidates[: self.options.window])
        level = next(
            (lv for lv in range(len(SHORTEN_LEVELS)) if self._needed(ask, probe, lv) <= context),
            len(SHORTEN_LEVELS) - 1,
        )
        why = (
            f"{n} candidates, more than the window of {self.options.window}"
            if n > self.options.window
            else f"the full list does not fit {context} tokens"
        )
        self._plan = _Plan(
            level,
            True,
            f"reranked in windows of {self.options.window} moving {self.options.window_step} ({why})",
        )
        return self._plan

    # ------------------------------------------------------------------ answering

    async def answer(self, ask: NodeAsk) -> NodeAnswer:
        plan = self.plan(ask)
        notes = [plan.note] if plan.note and ask.step == 1 else []
        if plan.windowed and ask.node != BACKWARD:
            return await self._windows(ask, plan, notes)
        items = tuple(ask.previous[: self.options.window]) if plan.windowed else None
        result = await self._ask(ask, items, plan.level, list(items or ask.previous), notes, "")
        if isinstance(result, NodeAnswer):
            return result
        parsed, calls, repair = result
        return self._finish(ask, parsed, calls, notes, repair)

    async def _windows(self, ask: NodeAsk, plan: _Plan, notes: list[str]) -> NodeAnswer:
        """RankGPT's sliding windows over the previous list, bottom to top."""
        order = ask.previous
        n, size, step = len(order), self.options.window, self.options.window_step
        starts: list[int] = []
        start = max(n - size, 0)
        while True:
            starts.append(start)
            if start == 0:
                break
            start = max(start - step, 0)
        calls: list[LLMCall] = []
        repair = RepairCount()
        parsed: Parsed | None = None
        for start in starts:
            end = min(start + size, n)
            items = tuple(order[start:end])
            label = f"window {start + 1}-{end}: "
            try:
                result = await self._ask(
                    ask, items, plan.level, list(items), notes, label, window=[start + 1, end]
                )
            except DeadlineExceeded as exc:  # earlier windows' calls are kept too
                exc.calls = [*calls, *exc.calls]
                raise
            if isinstance(result, NodeAnswer):
                result.calls = [*calls, *result.calls]
                result.repair = repair.add(result.repair or RepairCount())
                return result
            parsed, more, fix = result
            calls += more
            repair = repair.add(fix)
            if parsed.ranking is None:
                notes.append(f"{label}unusable, the step is unusable")
                return NodeAnswer(
                    None,
                    parsed.next_node,
                    self.name,
                    calls,
                    notes,
                    problem=f"{label}{parsed.problem}",
                    repair=repair,
                )
            order = [*order[:start], *parsed.ranking, *order[end:]]
        assert parsed is not None
        parsed.ranking = order
        return self._finish(ask, parsed, calls, notes, repair)

    async def _ask(
        self,
        ask: NodeAsk,
        items: tuple[str, ...] | None,
        level: int,
        previous: list[str],
        notes: list[str],
        label: str,
        window: list[int] | None = None,
    ) -> tuple[Parsed, list[LLMCall], RepairCount] | NodeAnswer:
        """One prompt and its bounded re-asks; a NodeAnswer when the endpoint failed."""
        session = self.session(ask, items, level)
        expect_ranking = ask.node != BACKWARD
        keep = set(previous)
        pool = [(node, [i for i in ranking if i in keep]) for node, ranking in ask.pool]
        withdrawn = [(node, [i for i in ranking if i in keep]) for node, ranking in ask.withdrawn]
        base = session.messages(ask.node, pool, ask.offered, withdrawn)
        candidates = [c.item_id for c in session.request.candidates]
        fmt = self.response_format(ask, session)
        budget = answer_tokens(len(candidates), self.options.shape, expect_ranking)
        conversation = base
        calls: list[LLMCall] = []
        repair = RepairCount()
        parsed: Parsed | None = None
        notes.extend(f"{label}{note}" for note in session.notes if f"{label}{note}" not in notes)
        for attempt in range(max(1, min(1 + self.reasks, ask.calls_left))):
            counted = prompt_tokens(self.options.counter, conversation)
            room = self.options.context_tokens - counted
            max_tokens = min(self.options.max_tokens, max(budget, 16), max(room, 0))
            if attempt and max_tokens < budget:
                notes.append(f"{label}no re-ask: it would not fit the context")
                break
            if max_tokens < 16:
                return NodeAnswer(
                    None,
                    None,
                    self.name,
                    calls,
                    notes,
                    repair=repair,
                    problem=(
                        f"{label}the prompt leaves {room} of {self.options.context_tokens} context "
                        "tokens for the answer"
                    ),
                )
            try:
                call = await self.chat.complete(conversation, fmt, ask.deadline, max_tokens)
            except DeadlineExceeded as exc:  # this node's finished calls are kept too
                exc.calls = [
                    *calls,
                    *(
                        c.model_copy(
                            update={"window": window, "max_tokens": max_tokens, "counted_tokens": counted}
                        )
                        for c in exc.calls
                    ),
                ]
                raise
            call = call.model_copy(
                update={"window": window, "max_tokens": max_tokens, "counted_tokens": counted}
            )
            calls.append(call)
            if call.raw_replaced:
                notes.append(
                    f"{label}call {attempt + 1}: {len(call.raw_replaced)} character(s) the "
                    "store cannot hold (U+0000, lone surrogates) kept as U+FFFD "
                    "(raw_replaced)"
                )
            if call.raw is None:
                return NodeAnswer(
                    None, None, self.name, calls, notes, repair=repair, problem=f"LLM error: {call.error}"
                )
            parsed = parse_answer(
                call.raw,
                candidates=candidates,
                previous=previous,
                offered=ask.offered,
                expect_ranking=expect_ranking,
                aliases=self.prompts.uses_aliases,
                max_repair_share=self.options.max_repair_share,
            )
            if call.finish_reason == "length":
                notes.append(f"{label}call {attempt + 1}: cut at max_tokens={max_tokens}")
            if parsed.repair is not None:
                fix = parsed.repair
                repair = repair.add(
                    RepairCount(
                        answers=1,
                        permutations=int(fix.was_permutation),
                        appended=fix.appended,
                        duplicates=fix.duplicates,
                        unknown=fix.unknown,
                        ties=fix.ties,
                    )
                )
            elif expect_ranking:
                repair = repair.add(RepairCount(answers=1))  # no list at all: not a permutation
            notes += [f"{label}call {attempt + 1}: {note}" for note in parsed.notes]
            if parsed.problem is None:
                break
            notes.append(f"{label}call {attempt + 1} unusable: {parsed.problem}")
            conversation = [
                *base,
                {"role": "assistant", "content": excerpt(call.raw)},
                session.reask(parsed.problem, ask.node, ask.offered),
            ]
        assert parsed is not None
        return parsed, calls, repair

    def _finish(
        self, ask: NodeAsk, parsed: Parsed, calls: list[LLMCall], notes: list[str], repair: RepairCount
    ) -> NodeAnswer:
        expect_ranking = ask.node != BACKWARD
        next_node = parsed.next_node
        if next_node is None:
            visited = (*ask.visited, ask.node)
            next_node = next_by_goal(ask.request.goal, ask.plan.aspect_names, visited, ask.offered)
            notes.append(f"no usable next node; chose {next_node!r} from the goal")
        summary = repair if expect_ranking else None
        if expect_ranking and parsed.ranking is None:
            return NodeAnswer(
                None, next_node, self.name, calls, notes, problem=parsed.problem, repair=summary
            )
        return NodeAnswer(parsed.ranking, next_node, self.name, calls, notes, repair=summary)

    def response_format(self, ask: NodeAsk, session: SessionPrompts) -> dict[str, Any] | None:
        """The answer schema, in the request shape of the configured server family."""
        if not self.structured:
            return None
        labels = [session.label(c.item_id) for c in session.request.candidates]
        schema = answer_schema(
            labels,
            ask.offered,
            ranking=ask.node != BACKWARD,
            aliases=self.prompts.uses_aliases,
            shape=self.options.shape,
        )
        return response_format(schema, self.options.mode, f"{ask.node}_step")
