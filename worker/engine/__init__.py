"""The paper's method: nodes, prompts, answer parsing, heuristics and the walk itself."""
