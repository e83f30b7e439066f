"""Packaging that pyproject.toml cannot express: the repository's top-level `prompts/` folder ships
as the package `worker.prompts` (read with importlib.resources), beside every package of worker/,
in editable and wheel installs alike."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["worker*"]), "worker.prompts"],
    package_dir={"worker.prompts": "prompts"},
)
