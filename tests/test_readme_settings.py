"""The README's configuration table names every setting, and names no setting that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from worker.config import Settings

README = Path(__file__).resolve().parent.parent / "README.md"
PREFIX = "LLM4RERANK_"


def _documented() -> set[str]:
    """Variables in the table's first column; `A` / `_B` is shorthand for `A` and PREFIX + `B`."""
    names: set[str] = set()
    for line in README.read_text(encoding="utf-8").splitlines():
        if not line.startswith(f"| `{PREFIX}"):
            continue
        first_cell = line.split("|")[1]
        for token in re.findall(r"`([A-Z0-9_]+)`", first_cell):
            names.add(token if token.startswith(PREFIX) else PREFIX + token.lstrip("_"))
    return names


def test_readme_table_matches_settings() -> None:
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    documented = _documented()
    assert not fields - documented, f"settings missing from the README table: {sorted(fields - documented)}"
    assert not documented - fields, f"README names unknown settings: {sorted(documented - fields)}"
