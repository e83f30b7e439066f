"""Errors that cross module boundaries, each with a stable code for dead letters and exit codes."""

from __future__ import annotations

from typing import Any


class RequestError(ValueError):
    """A request that cannot be processed; `code` goes into the dead-letter record."""

    def __init__(self, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


class ConfigError(RuntimeError):
    """A deployment mistake: the message names the setting to fix (exit code 2)."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed; the walk ends with the best list so far.

    `calls` are the LLM calls of the interrupted node (completed ones and the one cut short), so
    the walk stores and counts them."""

    def __init__(self, message: str, calls: list[Any] | None = None) -> None:
        super().__init__(message)
        self.calls: list[Any] = list(calls or [])


class ReplayExhausted(RuntimeError):
    """A recorded replay asked for more LLM answers than the session stored."""
