"""The token estimate (regex scans, cached) against the piece-by-piece definition it implements."""

from __future__ import annotations

import math
import re

from cases import cases
from hypothesis import given
from hypothesis import strategies as st

from worker.engine.tokens import EstimateCounter

_PIECE = re.compile(r"[A-Za-z]+|\d|\n|[^\sA-Za-z\d]")


def reference(text: str) -> int:
    """A word is one token per two letters; a digit, sign or newline one; a non-ASCII character two."""
    total = 0
    for piece in _PIECE.findall(text):
        if piece[0].isascii() and piece[0].isalpha():
            total += math.ceil(len(piece) / 2)
        elif piece.isascii():
            total += 1
        else:
            total += 2
    return total


@cases(300)
@given(
    st.text(
        alphabet=st.sampled_from('ab Zx19\n\t\r.,:{}"é€Ω٣\u00a0\u2028\x1c😀') | st.characters(), max_size=200
    )
)
def test_estimate_matches_the_piece_by_piece_count(text: str) -> None:
    counter = EstimateCounter()
    assert counter.count(text) == reference(text)
    assert counter.count(text) == reference(text)  # the cached answer too


def test_estimate_on_a_prompt_line() -> None:
    assert EstimateCounter().count("Rank items 12 and 7.\n") == reference("Rank items 12 and 7.\n") == 12
