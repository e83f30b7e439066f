"""Fixtures of the engine tests; the helpers themselves live in engine_kit.py."""

from engine_kit import llm_server, sim, sim_factory

__all__ = ["llm_server", "sim", "sim_factory"]
