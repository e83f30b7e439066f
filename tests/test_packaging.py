"""Dependencies: the lock file pins every runtime dependency pyproject.toml names (core and the
`eval` extra the image keeps); the worker, the API and sim-llm run without the `eval` extra, and
the commands that need it say which extra to install."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from service_kit import REPO

from worker.extras import EXTRAS

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))
LOCK = REPO / "requirements.lock"


def locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in LOCK.read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version.split(";")[0].strip())
    return pins


def runtime_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(r) for r in (*project["dependencies"], *project["optional-dependencies"]["eval"])]


def test_the_lock_pins_every_runtime_dependency_within_its_range() -> None:
    pins = locked()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock; run `make lock`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]} outside {requirement.specifier}; run `make lock`"
        )
        for extra in requirement.extras:  # sqlalchemy[asyncio] pulls greenlet
            assert extra != "asyncio" or "greenlet" in pins


def test_the_eval_extra_is_what_extras_py_names() -> None:
    eval_extra = {
        canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["eval"]
    }
    assert eval_extra == {canonicalize_name(m) for m in EXTRAS["eval"]}
    core = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert not core & eval_extra


def test_the_dockerfile_installs_from_the_lock() -> None:
    lines = [line.strip() for line in (REPO / "Dockerfile").read_text("utf-8").splitlines()]
    install_lock = next(i for i, line in enumerate(lines) if "pip install -r /app/requirements.lock" in line)
    install_app = next(i for i, line in enumerate(lines) if "pip install --no-deps /app" in line)
    assert install_lock < install_app


WITHOUT_EVAL = f"""
import sys
for name in {EXTRAS["eval"]!r}:
    sys.modules[name] = None  # as if the `eval` extra were not installed
"""


def without_eval(code: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EVAL + code, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def test_the_service_runs_without_the_eval_extra_and_its_commands_name_it(tmp_path: Path) -> None:
    """One process (imports are the cost): the worker, API, sim-llm and migrations import; Parquet
    export and `eval` stop with the extra's name (eval: one line, exit 2)."""
    code = """
import worker.stream.app, worker.service, worker.audit.api, worker.simllm.server, worker.store.migrate
from worker.audit.export import parquet_schema
from worker.errors import ConfigError
try:
    parquet_schema()
except ConfigError as exc:
    print("parquet:", exc)
from worker.cli import app
app(sys.argv[1:])
"""
    done = without_eval(
        code, "eval", "--users", "7", "--no-progress", "--out", str(tmp_path / "out"), cwd=tmp_path
    )
    assert done.returncode == 2, done.stderr[-3000:]
    parquet = next(line for line in done.stdout.splitlines() if line.startswith("parquet:"))
    assert "pyarrow" in parquet and "`eval` extra" in parquet
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "`eval` extra" in line and "numpy" in line
    assert "llm4rerank[eval]" in line
