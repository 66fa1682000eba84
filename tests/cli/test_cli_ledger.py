"""`potluck ledger` on a `potluck simulate` run: verify, show, contributions, proofs."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from potluck.cli.main import app

runner = CliRunner()


def potluck(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> Path:
    """3 rounds of 4 nodes, half of them sampled each round."""
    run_dir = tmp_path_factory.mktemp("ledger") / "run"
    done = potluck("simulate", "--rounds", 3, "--nodes", 4, "--fraction", 0.5, "-F", "epochs=1", "--run-dir", run_dir)
    assert done.exit_code == 0, done.output
    return run_dir


@pytest.fixture
def run(simulated, tmp_path) -> Path:
    return Path(shutil.copytree(simulated, tmp_path / "run"))


def test_a_simulated_run_keeps_a_ledger_that_verifies(simulated):
    done = potluck("ledger", "verify", simulated)
    assert done.exit_code == 0, done.output
    assert "the ledger verifies: entries 0 to 3, head" in done.output
    assert "a simulation: node and server keys are derived from the run seed" in done.output
    report = json.loads(potluck("ledger", "verify", simulated, "--json").output)
    assert report["ok"] and report["entries"] == 4 and report["problems"] == []
    assert potluck("check", simulated).exit_code == 0


def test_verify_exits_1_naming_the_entry_and_2_for_no_run(run, tmp_path):
    lines = (run / "ledger.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"examples":', '"examples":1', 1)
    (run / "ledger.jsonl").write_text("".join(lines))
    done = potluck("ledger", "verify", run)
    assert done.exit_code == 1
    assert "broken  entry 2: the server's signature does not verify" in done.output
    assert "first failure: entry 2:" in done.output
    assert potluck("ledger", "verify", tmp_path / "nothing").exit_code == 2


def test_show_lists_rounds_participants_and_model_digests(simulated):
    done = potluck("ledger", "show", simulated)
    assert done.exit_code == 0, done.output
    out = done.output.splitlines()
    assert out[0].startswith("run sim-") and "task digits  strategy fedavg" in out[0]
    marks = [json.loads((simulated / "checkpoints" / f"round-{r:04d}.json").read_text()) for r in range(4)]
    for rnd in range(1, 4):
        row = next(line for line in out if line.lstrip().startswith(f"{rnd}  "))
        assert marks[rnd]["model_sha256"][:16] in row and "node-" in row
    rows = json.loads(potluck("ledger", "show", simulated, "--json").output)
    assert [len(r["participants"]) for r in rows] == [0, 2, 2, 2]


def test_contributions_are_accounted_from_the_ledger_alone(simulated):
    data = json.loads(potluck("ledger", "contributions", simulated, "--format", "json").output)
    entries = [json.loads(line) for line in (simulated / "ledger.jsonl").read_text().splitlines()]
    assert sum(a["rounds"] for a in data) == 6  # 2 sampled per round, 3 rounds
    assert sum(a["examples"] for a in data) == sum(e.get("examples", 0) for e in entries)
    table = list(csv.DictReader(io.StringIO(potluck("ledger", "contributions", simulated, "--format", "csv").output)))
    assert [row["node"] for row in table] == [a["node"] for a in data]
    assert set(table[0]) >= {"node", "rounds", "examples", "rejected"}
    assert potluck("ledger", "contributions", simulated, "--format", "xml").exit_code == 2


def test_a_proof_checks_out_and_a_tampered_one_does_not(simulated, tmp_path):
    entry = json.loads((simulated / "ledger.jsonl").read_text().splitlines()[2])
    node = entry["contributions"][-1]["node"]
    proof = tmp_path / "proof.json"
    assert potluck("ledger", "proof", simulated, "--node", node, "--round", 2, "-o", proof).exit_code == 0
    key = json.loads((simulated / "ledger.jsonl").read_text().splitlines()[0])["server_key"]
    done = potluck("ledger", "check-proof", proof, "--server-key", key, "--root", entry["contributions_root"])
    assert done.exit_code == 0, done.output
    assert done.output.count("ok  ") == 6 and "the proof holds" in done.output
    doc = json.loads(proof.read_text())
    doc["contribution"]["weight"] += 1
    proof.write_text(json.dumps(doc))
    done = potluck("ledger", "check-proof", proof, "--server-key", key)
    assert done.exit_code == 1 and "FAIL  leaf" in done.output and "does NOT hold" in done.output
    absent = potluck("ledger", "proof", simulated, "--node", "node-999", "--round", 2)
    assert absent.exit_code == 1 and "holds no contribution of node 'node-999'" in absent.output


def test_a_proof_of_round_0_says_what_round_0_is(simulated):
    done = potluck("ledger", "proof", simulated, "--node", "node-000", "--round", 0)
    assert done.exit_code == 2
    assert done.output.strip() == ("potluck: error: --round 0 is the run's start entry, which holds no contributions: "
                                   "a proof is of a node's update in a round from 1 (`potluck ledger show` lists them)")


@pytest.mark.parametrize(("flag", "value"), [("--server-key", "zz"), ("--entry", "ab" * 31), ("--root", "g" * 64)])
def test_a_malformed_key_or_hash_is_named(simulated, tmp_path, flag, value):
    proof = tmp_path / "proof.json"
    entry = json.loads((simulated / "ledger.jsonl").read_text().splitlines()[2])
    assert potluck("ledger", "proof", simulated, "--node", entry["contributions"][0]["node"], "--round", 2,
                   "-o", proof).exit_code == 0
    done = potluck("ledger", "check-proof", proof, flag, value)
    assert done.exit_code == 2 and len(done.output.strip().splitlines()) == 1
    assert done.output.startswith(f"potluck: error: {flag} must be ") and "64 hex digits" in done.output
