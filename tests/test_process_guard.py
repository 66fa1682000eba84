"""The guard that keeps process-starting tests out of the fast subset (tests/process_guard.py)."""

from __future__ import annotations

import sys

import pytest

from process_guard import Seen, runs_potluck, verdict


@pytest.mark.parametrize(("argv", "potluck"), [
    ([sys.executable, "-m", "potluck.cli", "simulate"], True),
    ([sys.executable, "-m", "potluck", "--help"], True),
    (["/opt/venv/bin/potluck", "server"], True),
    ([sys.executable, "benchmarks/chaos.py", "--seed", "1"], True),
    ([sys.executable, "-c", "from potluck.apps.allocator import reuse_freed_memory", "tuned"], True),
    ([sys.executable, "-c", "import numpy"], False),
    ([sys.executable, "-m", "ruff", "check", "src/potluck"], False),
    ([sys.executable, "-m", "mypy", "-p", "potluck.core"], False),
    (["openssl", "verify", "potluck.crt"], False),
    (["systemd-analyze", "verify", "potluck-server.service"], False),
    ([], False),
])
def test_what_counts_as_running_potluck(argv, potluck):
    assert runs_potluck(argv) is potluck


def test_verdicts():
    tool = Seen(commands=[["openssl", "version"]])
    assert verdict(tool, set(), set(), child_faults=120) is None  # the checker explains its child
    cli = Seen(commands=[[sys.executable, "-m", "potluck.cli", "simulate"]])
    assert "runs potluck in another process" in verdict(cli, set(), set(), 500)
    assert "forked or spawned 1" in verdict(Seen(forks=1), set(), set(), 0)
    workers = verdict(Seen(), set(), {4242}, 0)
    assert workers is not None and "outside subprocess" in workers and "4242" in workers
    assert "outside subprocess" in verdict(Seen(), set(), set(), child_faults=300)  # started and reaped
    assert verdict(Seen(), {7}, {7, 8}, 300) is None  # an earlier test's children: not attributable
    assert verdict(Seen(), set(), set(), 0) is None
