"""Prompt token counts before sending: the model's own SentencePiece tokenizer where one is
configured (LLM4RERANK_LLM_TOKENIZER), else an estimate that errs high on prompt text."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

_WORD = re.compile(r"[A-Za-z]+")
_SINGLE = re.compile(r"\n|[^\sA-Za-z]")  # a digit, sign, newline or other one-character token
_WIDE = re.compile(r"[^\s\x00-\x7f]")  # the non-ASCII ones among them count twice
MESSAGE_OVERHEAD = 12  # chat-template markers around each message ([INST], <<SYS>>, ...)


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class EstimateCounter:
    """A Llama-style tokenizer splits digits one by one and keeps common words whole: count each
    digit, sign and newline as a token, a word as one token per two letters, and a non-ASCII
    character as two (byte fallback)."""

    name = "estimate"

    def count(self, text: str) -> int:
        return _estimate(text)


@lru_cache(maxsize=1024)
def _estimate(text: str) -> int:
    """Cached: a session's system message is counted again at every step. Three regex scans
    instead of a Python loop over every piece."""
    words = sum((len(w) + 1) // 2 for w in _WORD.findall(text))
    return words + len(_SINGLE.findall(text)) + len(_WIDE.findall(text))


class SentencePieceCounter:
    """Exact counts with the model's tokenizer.model."""

    def __init__(self, path: Path) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise ConfigError("LLM4RERANK_LLM_TOKENIZER needs the sentencepiece package") from None
        if not Path(path).is_file():
            raise ConfigError(f"LLM4RERANK_LLM_TOKENIZER: no file {path}")
        self.processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
        self.name = f"sentencepiece:{Path(path).name}"

    def count(self, text: str) -> int:
        return len(self.processor.encode(text))


def counter_for(path: Path | None) -> TokenCounter:
    return SentencePieceCounter(path) if path is not None else EstimateCounter()


def prompt_tokens(counter: TokenCounter, messages: list[dict[str, Any]]) -> int:
    """Tokens the server will count for these messages, template markers included."""
    return sum(counter.count(str(m.get("content", ""))) + MESSAGE_OVERHEAD for m in messages) + 4
