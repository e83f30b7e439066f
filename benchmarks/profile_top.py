"""The top frames of a py-spy profile (`py-spy record --format raw`, collapsed stacks).

Prints the ten functions with the most samples on the stack (inclusive) and the ten with the most
samples at the top of the stack (self), each as a share of all samples.
Usage: .venv/bin/python benchmarks/profile_top.py PROFILE.raw [--top 10]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# the process's entry and event loop: on every stack, they say nothing about where the time goes
WRAPPERS = (
    "asyncio/",
    "typer/",
    "click/",
    "mode/",
    "selectors",
    "llm4rerank",
    "worker/cli/",
    "threading",
    "<string>",
)


def top_frames(text: str, top: int = 10) -> tuple[int, list[tuple[str, int]], list[tuple[str, int]]]:
    """(samples, inclusive top, self top) of collapsed stacks 'frame;frame;... count'."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        for frame in set(frames):
            if not frame.split(" (", 1)[-1].startswith(WRAPPERS) and not frame.startswith("run_worker "):
                inclusive[frame] += n
        if frames:
            own[frames[-1]] += n
    return total, inclusive.most_common(top), own.most_common(top)


def _short(frame: str) -> str:
    """'func (path/to/module.py:12)' -> 'func (module.py)': one entry per function."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    elif "worker" in parts:
        parts = parts[parts.index("worker") :]
    return f"{name} ({'/'.join(parts[-3:])})"


def report(path: Path, top: int = 10) -> str:
    total, inclusive, own = top_frames(path.read_text(), top)
    lines = [f"{path.name}: {total} samples", "  on the stack (inclusive):"]
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in inclusive]
    lines.append("  at the top of the stack (self):")
    lines += [f"    {100 * n / total:5.1f}%  {frame}" for frame, n in own]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    print(report(args.profile, args.top))
