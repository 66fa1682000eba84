"""The benchmark scripts still run against the current wire and APIs (small sizes).

They are not tests of speed: these runs only check that each script finishes and
prints its table, so a protocol change cannot leave a benchmark silently broken.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


@pytest.mark.slow
def test_many_nodes_benchmark_runs_signed_nodes_through_rounds():
    out = run("benchmarks/many_nodes.py", "--nodes", "6", "--rounds", "2")
    row = out.strip().splitlines()[-1].split("|")
    assert row[0].strip() == "6 nodes, 2 rounds" and int(row[3]) == 6  # every node in every round


@pytest.mark.slow
def test_secagg_benchmark_runs_at_small_sizes():
    out = run("benchmarks/secagg.py", "--nodes", "12", "--values", "2000", "--simulate-rounds", "0")
    assert "12 nodes, 2,000 values" in out and "10%" in out
