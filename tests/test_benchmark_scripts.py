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


@pytest.mark.slow
def test_charlm_benchmark_compares_federated_with_central_at_a_tiny_size(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("To be, or not to be, that is the question.\nWhether 'tis nobler in the mind to suffer.\n" * 40)
    out = run("benchmarks/charlm.py", "--data-path", str(text), "--width", "16", "--depth", "1", "--heads", "2",
              "--context", "16", "--nodes", "2", "--rounds", "2", "--steps", "2", "--batch-size", "4",
              "--test-fraction", "0.1")
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]] for line in out.splitlines() if "|" in line}
    central = rows["central: 1 node, 1 round × 8 steps"]
    fed = rows["federated fedavg: 2 nodes, 2 rounds × 2 steps"]
    assert central[0] == fed[0] == "512"  # the same tokens: 2 rounds × 2 nodes × 2 steps × 4 blocks × 16
    assert float(central[3]) == 1.0
    assert float(fed[3]) == pytest.approx(float(fed[1]) / float(central[1]), abs=0.002)  # the table rounds to 3 places
    assert "11,760 parameters" in out and "target loss / central ≤ 1.10" in out
