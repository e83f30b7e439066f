"""Prompt token counts before sending: the model's own SentencePiece tokenizer where one is
configured (LLM4RERANK_LLM_TOKENIZER), else an estimate that errs high on prompt text."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError

_PIECE = re.compile(r"[A-Za-z]+|\d|\n|[^\sA-Za-z\d]")
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
        total = 0
        for piece in _PIECE.findall(text):
            if piece[0].isascii() and piece[0].isalpha():
                total += math.ceil(len(piece) / 2)
            elif piece.isascii():
                total += 1
            else:
                total += 2
        return total


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
