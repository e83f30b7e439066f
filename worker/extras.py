"""Optional dependency groups (pyproject's extras): the Kafka worker needs none of them; a command
that does says which extra to install instead of failing on an import deep inside."""

from __future__ import annotations

import importlib

from .errors import ConfigError

# extra -> the modules it provides, as pyproject.toml's [project.optional-dependencies] lists them
EXTRAS: dict[str, tuple[str, ...]] = {"eval": ("numpy", "matplotlib", "pyarrow", "tqdm")}


class MissingExtra(ConfigError):
    """A command needs modules of an extra that is not installed."""


def require_extra(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra naming `extra` when any of its `modules` (default: all) is missing."""
    missing = [m for m in modules or EXTRAS[extra] if not _importable(m)]
    if missing:
        raise MissingExtra(
            f"{what} needs {', '.join(missing)}, which the `{extra}` extra installs: "
            f"pip install 'llm4rerank[{extra}]' (or `make install`)"
        )


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
