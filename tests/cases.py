"""How many generated cases a property test runs.

Each count is written for the full suite (`make test`, CI), which runs hypothesis's default
profile. The fast lane (`make test-fast`) loads the `dev` profile: a quarter of each count, at
least 10, so a developer's loop stays short while CI explores the full depth."""

from __future__ import annotations

from typing import Any

from hypothesis import settings

FULL_PROFILE_EXAMPLES = 100  # hypothesis's default max_examples

settings.register_profile("dev", max_examples=FULL_PROFILE_EXAMPLES // 4)


def cases(n: int, **options: Any) -> settings:
    """Settings for n cases in the full suite, scaled to the loaded profile; no deadline, since
    a shared 2-core machine makes per-example timing meaningless."""
    scaled = n * settings.default.max_examples // FULL_PROFILE_EXAMPLES
    return settings(max_examples=max(10, scaled), deadline=None, **options)
