"""Fixtures of the engine tests; the helpers themselves live in engine_kit.py (sim-llm comes from
tests/conftest.py)."""

from engine_kit import llm_server

__all__ = ["llm_server"]
