"""Lint and a strict type check of the packages pyproject.toml lists under [tool.mypy],
as part of the test suite (so CI runs them)."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean():
    done = run("ruff", "check", "--no-cache", "src", "tests", "benchmarks")  # a stale cache hid an error once
    assert done.returncode == 0, done.stdout + done.stderr


def test_typed_packages_pass_strict_mypy():
    done = run("mypy")
    assert done.returncode == 0, done.stdout + done.stderr
