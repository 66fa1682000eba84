"""`potluck check` as a user runs it: one line per finding, exit 0 / 1 / 2, and --json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.runtime.rundir import RunDirectory

runner = CliRunner()


@pytest.fixture
def run(tmp_path) -> Path:
    """A finished three-round run, written through RunDirectory as the apps do."""
    run = RunDirectory(tmp_path / "run")
    run.create('task = "digits"\n')
    for rnd in range(4):
        params = Params.from_arrays({"w": np.full(5, rnd, np.float32)})
        record = RoundRecord(rnd, 2, 2, 0.1, params.digest, metrics={"loss": 0.3}) if rnd else \
            RoundRecord(0, 0, 0, 0.0, params.digest)
        run.commit(record, params, {})
    run.write_final(params)
    return run.path


def check(*args: str):
    return runner.invoke(app, ["check", *args])


def test_a_good_run_prints_ok_lines_and_exits_0(run):
    result = check(str(run))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines == [
        "ok      config.toml is present",
        "ok      rounds 0 to 3 are committed, with no gap",
        "ok      4 models and strategy states match the SHA-256 in their commit marks and decode as parameters",
        "ok      metrics.jsonl holds the records of rounds 1 to 3, as in their marks",
        "ok      model.safetensors is the model of round 3, the last committed round",
        f"{run}: all invariants hold (last committed round 3)",
    ]


def test_a_broken_invariant_is_one_line_and_exit_1(run):
    path = run / "checkpoints" / "round-0002.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"!")
    (run / "checkpoints" / ".round-0004.json.tmp-12").write_text("{")
    result = check(str(run))
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert "broken  round 2: checkpoints/round-0002.safetensors (the model) does not match the SHA-256 its commit mark " \
           "names: it changed after the commit" in lines
    assert any(line.startswith("note    checkpoints/.round-0004.json.tmp-12 is a temp file") for line in lines)
    assert lines[-1] == f"{run}: 1 problem found, the run directory is not consistent"


def test_notes_alone_exit_0(run):
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-10])
    result = check(str(run))
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("note    metrics.jsonl") for line in result.output.splitlines()) == 2


def test_json_output_has_every_finding(run):
    (run / "checkpoints" / "round-0001.json").unlink()
    result = check(str(run), "--json")
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False and report["last_round"] == 3 and report["committed"] == [0, 2, 3]
    (missing,) = [f for f in report["findings"] if f["level"] == "broken"]
    assert missing["code"] == "mark-missing" and missing["round"] == 1
    assert missing["path"] == "checkpoints/round-0001.json"


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "is not a run directory"),
])
def test_not_a_run_directory_is_a_usage_error(tmp_path, make, message):
    result = check(str(make(tmp_path)))
    assert result.exit_code == 2
    assert result.output.strip().startswith("potluck: error:") and message in result.output


def test_help_explains_what_is_checked_and_the_exit_codes():
    result = runner.invoke(app, ["check", "--help"])
    assert result.exit_code == 0
    for words in ("RUN_DIR", "--json", "SHA-256", "metrics.jsonl", "model.safetensors", "temp files",
                  "0 when every invariant holds", "1 when one is broken", "2 when RUN_DIR is not a run directory"):
        assert words in " ".join(result.output.split()), words
    assert "check" in runner.invoke(app, ["--help"]).output
