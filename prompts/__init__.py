"""The prompt sets, one folder each, shipped as the package data of `worker.prompts`."""
