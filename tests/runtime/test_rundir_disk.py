"""A run directory on a full or read-only disk: from the failing write to the CLI's one line.

The tmpfs tests mount a real 2 MB file system (root only; skipped elsewhere with the
reason). The monkeypatched ENOSPC tests run everywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from potluck.apps.check import check_run_dir
from potluck.cli.main import app
from potluck.core import files
from potluck.core.errors import RunDirError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.runtime.rundir import RunDirectory

runner = CliRunner()


class Disk:
    """A small tmpfs that tests can fill up or make read-only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)

    def fill(self) -> None:
        with open(self.filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path = tmp_path / "disk"
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield Disk(path)
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def params_for(rnd: int, size: int = 8) -> Params:
    return Params.from_arrays({"w": np.full(size, rnd, np.float32)})


def commit(run: RunDirectory, rnd: int, size: int = 8) -> None:
    params = params_for(rnd, size)
    record = RoundRecord(rnd, 2, 2, 0.1, params.digest, metrics={"loss": 1.0}) if rnd else \
        RoundRecord(0, 0, 0, 0.0, params.digest)
    run.commit(record, params, {"momentum": np.full(3, rnd, np.float32)})


def committed_run(path: Path, rounds: int, size: int = 8) -> RunDirectory:
    run = RunDirectory(path)
    run.create('task = "fake"\n')
    for rnd in range(rounds + 1):
        commit(run, rnd, size)
    return run


def assert_intact(run: RunDirectory, last: int, size: int = 8) -> None:
    """Round ``last`` is the last committed one, loadable, and every invariant holds."""
    assert run.committed_rounds() == list(range(last + 1))
    assert run.load(last).params == params_for(last, size)
    assert not [p for p in run.leftovers(last) if files.is_temp_file(p.name)]
    report = check_run_dir(run.path)
    assert report.ok, [f.message for f in report.findings if f.level == "broken"]


def no_space_when_writing(monkeypatch, name_prefix: str) -> None:
    """The n-th write into a file whose name starts with ``name_prefix`` hits ENOSPC half-way."""
    real_open = open

    class File:
        def __init__(self, path, mode="r", **kw):
            self.f, self.name = real_open(path, mode, **kw), Path(path).name

        def write(self, data):
            if self.name.startswith(name_prefix):
                self.f.write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, attr):
            return getattr(self.f, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(files, "open", File, raising=False)


def test_no_space_while_writing_a_checkpoint_keeps_the_previous_round(tmp_path, monkeypatch):
    run = committed_run(tmp_path / "run", rounds=1)
    no_space_when_writing(monkeypatch, ".round-0002.safetensors.tmp")
    with pytest.raises(RunDirError, match=r"cannot write \S+/round-0002\.safetensors: no space left on device; "
                                          r"round 2 was not committed; round 1 and earlier are intact"):
        commit(run, 2)
    assert not list(run.checkpoints.glob("*0002*")) and not list(run.checkpoints.glob(".*"))
    assert_intact(run, 1)
    monkeypatch.undo()  # space was freed
    assert run.prepare_resume().round == 1
    commit(run, 2)
    assert_intact(run, 2)


def test_no_space_while_appending_metrics_leaves_the_round_committed(tmp_path, monkeypatch):
    run = committed_run(tmp_path / "run", rounds=1)
    no_space_when_writing(monkeypatch, "metrics.jsonl")
    with pytest.raises(RunDirError, match=r"cannot append to \S+metrics\.jsonl: no space left on device; "
                                          r"round 2 is committed and --resume rebuilds metrics\.jsonl"):
        commit(run, 2)
    assert_intact(run, 2)
    notes = {f.code for f in check_run_dir(run.path).findings if f.level == "note"}
    assert {"metrics-torn", "metrics-trailing"} <= notes
    monkeypatch.undo()
    assert run.prepare_resume().round == 2
    assert [r.round for r in run.records()] == [1, 2]


def test_full_disk_stops_with_a_clear_error_and_keeps_the_last_round(small_disk):
    size = 64 * 1024  # 256 KB models: a 2 MB disk fills up within a few rounds
    run = committed_run(small_disk.path / "run", rounds=0, size=size)
    with pytest.raises(RunDirError, match="no space left on device") as caught:
        for rnd in range(1, 20):
            commit(run, rnd, size)
    last = run.committed_rounds()[-1]
    assert last >= 2 and f"round {last + 1} was not committed" in str(caught.value)
    assert str(run.checkpoints) in str(caught.value)
    assert_intact(run, last, size)
    assert not run.leftovers(last)  # the cut-short round's files were removed to free space


def test_read_only_disk_stops_with_a_clear_error_and_keeps_the_last_round(small_disk):
    run = committed_run(small_disk.path / "run", rounds=2)
    small_disk.remount("ro")
    with pytest.raises(RunDirError, match=r"cannot write \S+/round-0003\.safetensors: read-only file system; "
                                          r"round 3 was not committed"):
        commit(run, 3)
    assert_intact(run, 2)
    with pytest.raises(RunDirError, match=r"metrics\.jsonl: read-only file system"):
        run.prepare_resume()
    small_disk.remount("rw")
    assert run.prepare_resume().round == 2


def simulate(*args: str):
    return runner.invoke(app, ["simulate", "--nodes", "3", "--fit", "epochs=1", *args])


def error_lines(output: str) -> list[str]:
    assert "Traceback" not in output
    return [line for line in output.splitlines() if line.startswith("potluck: error:")]


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_simulate_on_a_failing_disk_prints_one_line_and_resumes_once_fixed(tmp_path, small_disk, fault):
    whole = simulate("--rounds", "3", "--run-dir", str(tmp_path / "whole"))
    assert whole.exit_code == 0, whole.output
    run_dir = small_disk.path / "run"
    assert simulate("--rounds", "1", "--run-dir", str(run_dir)).exit_code == 0

    small_disk.remount("ro") if fault == "read-only" else small_disk.fill()
    failed = simulate("--rounds", "3", "--run-dir", str(run_dir), "--resume")
    assert failed.exit_code == 1
    (line,) = error_lines(failed.output)
    assert str(run_dir) in line
    assert ("read-only file system" if fault == "read-only" else "no space left on device") in line
    checked = runner.invoke(app, ["check", str(run_dir)])
    assert checked.exit_code == 0, checked.output
    assert "all invariants hold (last committed round 1)" in checked.output

    small_disk.remount("rw") if fault == "read-only" else small_disk.free()
    resumed = simulate("--rounds", "3", "--run-dir", str(run_dir), "--resume")
    assert resumed.exit_code == 0, resumed.output
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [x["model_digest"] for x in lines] == [x["model_digest"] for x in expected]
    assert runner.invoke(app, ["check", str(run_dir)]).exit_code == 0
