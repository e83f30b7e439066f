"""The LLM policy: render the node's prompt, ask the model, parse and repair, re-ask if unusable."""

from __future__ import annotations

from typing import Any

from ..engine.heuristics import next_by_goal
from ..engine.nodes import BACKWARD
from ..engine.parse import parse_answer
from ..engine.prompts import FIELD_MAX_CHARS, PromptSet, SessionPrompts
from ..engine.steps import LLMCall, NodeAnswer, NodeAsk
from .chat import ChatTransport, LLMUnavailable


class LLMPolicy:
    """One per walk (it caches the session's constant prompt prefix); the transport is shared.

    `on_unavailable="degrade"` turns an endpoint that stays down into an unusable step (the walk
    then falls back); `"raise"` lets the worker hold the session and apply backpressure.
    """

    name = "llm"

    def __init__(
        self,
        chat: ChatTransport,
        prompts: PromptSet,
        *,
        structured: bool = True,
        reasks: int = 1,
        on_unavailable: str = "degrade",
        field_max_chars: int = FIELD_MAX_CHARS,
    ) -> None:
        self.chat = chat
        self.prompts = prompts
        self.structured = structured
        self.reasks = reasks
        self.on_unavailable = on_unavailable
        self.field_max_chars = field_max_chars
        self._session: SessionPrompts | None = None

    def session(self, ask: NodeAsk) -> SessionPrompts:
        if self._session is None or self._session.request is not ask.request:
            self._session = SessionPrompts(self.prompts, ask.request, ask.plan, self.structured,
                                           self.field_max_chars)
        return self._session

    async def answer(self, ask: NodeAsk) -> NodeAnswer:
        session = self.session(ask)
        expect_ranking = ask.node != BACKWARD
        pool = [(node, list(ranking)) for node, ranking in ask.pool]
        conversation = session.messages(ask.node, pool, ask.offered)
        fmt = self.response_format(ask, session) if self.structured else None
        candidates = [c.item_id for c in ask.request.candidates]
        calls: list[LLMCall] = []
        notes: list[str] = list(session.notes)
        parsed = None
        for attempt in range(max(1, min(1 + self.reasks, ask.calls_left))):
            try:
                call = await self.chat.complete(conversation, fmt, ask.deadline)
            except LLMUnavailable as exc:
                if self.on_unavailable == "raise":
                    raise
                calls.append(LLMCall(messages=conversation, response_format=fmt, error=str(exc)))
                return NodeAnswer(None, None, self.name, calls, notes,
                                  problem=f"LLM endpoint unavailable: {exc}")
            calls.append(call)
            if call.raw_replaced:
                notes.append(f"call {attempt + 1}: {len(call.raw_replaced)} character(s) the store "
                             "cannot hold (U+0000, lone surrogates) kept as U+FFFD (raw_replaced)")
            if call.raw is None:
                return NodeAnswer(None, None, self.name, calls, notes,
                                  problem=f"LLM error: {call.error}")
            parsed = parse_answer(
                call.raw, candidates=candidates, previous=ask.previous, offered=ask.offered,
                expect_ranking=expect_ranking, aliases=self.prompts.uses_aliases,
            )
            notes += [f"call {attempt + 1}: {note}" for note in parsed.notes]
            if parsed.problem is None:
                break
            notes.append(f"call {attempt + 1} unusable: {parsed.problem}")
            conversation = [*conversation, {"role": "assistant", "content": call.raw},
                            session.reask(parsed.problem, ask.node, ask.offered)]
        assert parsed is not None
        next_node = parsed.next_node
        if next_node is None:
            visited = (*ask.visited, ask.node)
            next_node = next_by_goal(ask.request.goal, ask.plan.aspect_names, visited, ask.offered)
            notes.append(f"no usable next node; chose {next_node!r} from the goal")
        if expect_ranking and parsed.ranking is None:
            return NodeAnswer(None, next_node, self.name, calls, notes, problem=parsed.problem)
        return NodeAnswer(parsed.ranking, next_node, self.name, calls, notes)

    def response_format(self, ask: NodeAsk, session: SessionPrompts) -> dict[str, Any]:
        """A JSON Schema the server enforces (vLLM guided decoding): a permutation and a node."""
        properties: dict[str, Any] = {"next_node": {"type": "string", "enum": list(ask.offered)}}
        required = ["next_node"]
        if ask.node != BACKWARD:
            n = len(ask.request.candidates)
            item: dict[str, Any] = (
                {"type": "integer", "minimum": 1, "maximum": n}
                if self.prompts.uses_aliases
                else {"type": "string", "enum": [c.item_id for c in ask.request.candidates]}
            )
            properties = {"ranking": {"type": "array", "items": item, "minItems": n,
                                      "maxItems": n}, **properties}
            required = ["ranking", "next_node"]
        schema = {"type": "object", "properties": properties, "required": required,
                  "additionalProperties": False}
        return {"type": "json_schema",
                "json_schema": {"name": f"{ask.node}_step", "schema": schema, "strict": True}}
