"""The evaluation's goals and candidate protocols, as names the CLI validates before any of the
numeric modules (numpy, the `eval` extra) is imported."""

from __future__ import annotations

GOALS: dict[str, str] = {
    "A": "Focus on accuracy",
    "D": "Focus on diversity",
    "F": "Focus on fairness",
    "ADF": "Consider accuracy, diversity and fairness in a balanced way",
    "D-F": "Mainly focus on diversity, followed by fairness",
    "F-D": "Mainly focus on fairness, followed by diversity",
}

PROTOCOLS: dict[str, str] = {
    "paper": "the held-out item plus GMF's top n-1 unseen items, in GMF order (a held-out item GMF "
    "ranks lower sits last)",
    "random-position": "the same candidates, the held-out item moved to a uniformly random position "
    "(the score column stays in list order, so neither position nor score gives it away)",
    "retrieved": "only users whose held-out item is among GMF's top n unseen items; the candidates are "
    "GMF's top n, in GMF order",
}
DEFAULT_PROTOCOL = "paper"
