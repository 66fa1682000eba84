"""``check_run_dir`` on a real run: it passes, and each kind of damage gets its own finding."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from potluck.apps.check import check_run_dir
from potluck.apps.simulate import run_simulation
from potluck.core.config import SimulationConfig
from potluck.core.errors import RunDirError


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("check") / "run"
    run_simulation(SimulationConfig.from_mapping({"rounds": 3, "nodes": 3, "fit": {"epochs": 1}, "run_dir": str(path)}))
    return path


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    """A fresh copy of the finished run, free to damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def not_ok(run: Path) -> list[tuple[str, str, str]]:
    return [(f.level, f.code, f.message) for f in check_run_dir(run).findings if f.level != "ok"]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def metrics_lines(run: Path) -> list[str]:
    return (run / "metrics.jsonl").read_text().splitlines(keepends=True)


def write_metrics(run: Path, lines: list[str]) -> None:
    (run / "metrics.jsonl").write_text("".join(lines))


def test_a_finished_run_passes_every_check(run):
    report = check_run_dir(run)
    assert report.ok and report.committed == (0, 1, 2, 3) and report.last_round == 3
    assert [f.code for f in report.findings] == ["config", "marks", "checkpoints", "metrics", "final", "ledger"]
    assert all(f.level == "ok" for f in report.findings)
    assert report.summary() == f"{run}: all invariants hold (last committed round 3)"


def damage_model(run: Path) -> None:
    (run / "checkpoints" / "round-0002.safetensors").unlink()


def damage_strategy(run: Path) -> None:
    (run / "checkpoints" / "round-0001.strategy.safetensors").unlink()


def damage_flip(run: Path) -> None:
    flip_last_byte(run / "checkpoints" / "round-0001.safetensors")


def damage_mark(run: Path) -> None:
    (run / "checkpoints" / "round-0001.json").unlink()


def damage_mark_content(run: Path) -> None:
    (run / "checkpoints" / "round-0002.json").write_text("{")


def damage_not_params(run: Path) -> None:
    junk = b"not safetensors at all"
    (run / "checkpoints" / "round-0002.safetensors").write_bytes(junk)
    mark_path = run / "checkpoints" / "round-0002.json"
    mark = json.loads(mark_path.read_text())
    mark["model_sha256"] = hashlib.sha256(junk).hexdigest()
    mark_path.write_text(json.dumps(mark))


def damage_missing_metrics_line(run: Path) -> None:
    lines = metrics_lines(run)
    write_metrics(run, [lines[0], lines[2]])


def damage_bad_metrics_line(run: Path) -> None:
    lines = metrics_lines(run)
    write_metrics(run, [lines[0], lines[1][:30] + "\n", lines[2]])


def damage_metrics_value(run: Path) -> None:
    lines = metrics_lines(run)
    entry = json.loads(lines[1])
    entry["accuracy"] = 0.999
    write_metrics(run, [lines[0], json.dumps(entry) + "\n", lines[2]])


def damage_uncommitted_line(run: Path) -> None:
    entry = json.loads(metrics_lines(run)[2])
    entry["round"] = 4
    write_metrics(run, [*metrics_lines(run), json.dumps(entry) + "\n"])


def damage_duplicate_line(run: Path) -> None:
    lines = metrics_lines(run)
    write_metrics(run, [*lines, lines[1]])


def damage_final(run: Path) -> None:
    shutil.copyfile(run / "checkpoints" / "round-0001.safetensors", run / "model.safetensors")


def damage_config(run: Path) -> None:
    (run / "config.toml").unlink()


@pytest.mark.parametrize(
    ("damage", "code", "message"),
    [
        (damage_model, "file-missing", "round 2: checkpoints/round-0002.safetensors (the model) is missing"),
        (damage_strategy, "file-missing",
         "round 1: checkpoints/round-0001.strategy.safetensors (the strategy state) is missing"),
        (damage_flip, "digest-mismatch", "round 1: checkpoints/round-0001.safetensors (the model) does not match "
                                         "the SHA-256 its commit mark names: it changed after the commit"),
        (damage_mark, "mark-missing", "round 1 has no commit mark (checkpoints/round-0001.json) although round 3 "
                                      "is committed: marks must run 0, 1, 2, … without a gap"),
        (damage_mark_content, "mark-unreadable", "checkpoints/round-0002.json is not a valid commit mark"),
        (damage_not_params, "not-parameters, ledger-entry-differs",  # the mark no longer matches its ledger entry
         "round 2: checkpoints/round-0002.safetensors (the model) does not decode as parameters"),
        (damage_missing_metrics_line, "metrics-missing", "metrics.jsonl has no line for committed round 2"),
        (damage_bad_metrics_line, "metrics-bad-line, metrics-missing", "metrics.jsonl line 2 is not a round record"),
        (damage_metrics_value, "metrics-differs",
         "metrics.jsonl line 2 (round 2) differs from the record in checkpoints/round-0002.json"),
        (damage_uncommitted_line, "metrics-uncommitted", "metrics.jsonl line 4 is for round 4, which is not committed"),
        (damage_duplicate_line, "metrics-duplicate", "metrics.jsonl has round 2 twice (lines 2 and 4)"),
        (damage_final, "final-differs", "model.safetensors is not the model of round 3, the last committed round "
                                        "(it is the model of round 1)"),
        (damage_config, "config-missing", "config.toml is missing, so the run cannot be resumed"),
    ],
)
def test_each_kind_of_damage_is_reported_as_broken_with_its_own_message(run, damage, code, message):
    damage(run)
    report = check_run_dir(run)
    assert not report.ok
    broken = [(f.code, f.message) for f in report.findings if f.level == "broken"]
    assert [c for c, _ in broken] == code.split(", "), broken
    assert broken[0][1].startswith(message)
    assert f"{len(broken)} problem" in report.summary()


def test_what_a_kill_leaves_behind_is_a_note_not_a_failure(run):
    lines = metrics_lines(run)
    write_metrics(run, [*lines[:2], lines[2][:25]])  # torn while appending round 3
    (run / "checkpoints" / ".round-0004.safetensors.tmp-321").write_bytes(b"half")
    shutil.copyfile(run / "checkpoints" / "round-0003.safetensors", run / "checkpoints" / "round-0004.safetensors")
    report = check_run_dir(run)
    assert report.ok
    assert [(level, code) for level, code, _ in not_ok(run)] == [
        ("note", "metrics-torn"), ("note", "metrics-trailing"), ("note", "temp-file"), ("note", "uncommitted-file"),
    ]
    messages = [m for _, _, m in not_ok(run)]
    assert messages[0].startswith("metrics.jsonl ends with a torn line")
    assert messages[1].startswith("metrics.jsonl has no line yet for round 3, the last committed round")
    assert messages[2].startswith("checkpoints/.round-0004.safetensors.tmp-321 is a temp file")
    assert messages[3].startswith("checkpoints/round-0004.safetensors belongs to a round whose commit was cut short")


def test_a_run_stopped_before_round_0_holds_nothing_broken(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "config.toml").write_text('task = "digits"\n')
    report = check_run_dir(tmp_path / "run")
    assert report.ok and report.last_round is None
    assert [f.code for f in report.findings] == ["config", "nothing-committed"]


def test_a_folder_that_is_no_run_directory_is_an_error_not_a_report(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        check_run_dir(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="is not a directory"):
        check_run_dir(tmp_path / "file")
    with pytest.raises(RunDirError, match="is not a run directory"):
        check_run_dir(tmp_path)


def test_check_changes_nothing(run):
    (run / "checkpoints" / ".round-0004.json.tmp-1").write_bytes(b"{")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    check_run_dir(run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
