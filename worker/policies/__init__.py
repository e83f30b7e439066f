"""Policies answer node prompts: the LLM over HTTP, the heuristic, or recorded answers."""
