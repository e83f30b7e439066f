"""A SIMULATED OpenAI-compatible LLM server for development and tests: not a model.

It reads the prompts this project renders and answers with the heuristic policy.
"""

SIMULATED_MODEL = "sim-llm-simulated"
