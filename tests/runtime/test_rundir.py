"""The run directory's crash consistency: a kill at every file-system step, then resume.

A "kill" here is an exception that nothing in potluck catches (like SIGKILL, it skips
every clean-up), raised at the n-th write, fsync, rename or removal, for every n.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from potluck.apps.check import check_run_dir
from potluck.apps.run import open_run
from potluck.core import files
from potluck.core.digests import settings_digest, update_digest
from potluck.core.errors import RunDirError
from potluck.core.params import Params, ParamsKind
from potluck.core.records import Contribution, RoundProvenance, RoundRecord
from potluck.ledger.audit import audit_ledger
from potluck.ledger.chain import Ledger, RunStart
from potluck.ledger.signing import derived_key, sign_update
from potluck.runtime import resume, rundir
from potluck.runtime.rundir import RunDirectory

ROUNDS = 3
CONFIG = 'task = "fake"\nrounds = 3\n'


class Killed(BaseException):
    """Not an Exception: no except clause in potluck may catch it, as with SIGKILL."""


class CountingStrategy:
    """Just enough of a Strategy to give open_run a state to save and restore."""

    def __init__(self) -> None:
        self.round = 0

    def state(self) -> dict[str, np.ndarray]:
        return {"momentum": np.full(3, self.round, np.float32)}

    def load_state(self, state) -> None:
        self.round = int(state["momentum"][0])


def params_for(rnd: int) -> Params:
    return Params.from_arrays({"w": np.full((4, 2), rnd, np.float32), "b": np.arange(2, dtype=np.float32) + rnd})


def record_for(rnd: int) -> RoundRecord:
    """Round ``rnd``'s record: node a's signed update was aggregated, node b timed out."""
    update = Params.from_arrays({"w": np.full((4, 2), 1, np.float32), "b": np.ones(2, np.float32)}, ParamsKind.DELTA)
    signed = sign_update(derived_key(0, "a"), "run-1", rnd, update, 10, {"lr": 0.1})
    contribution = Contribution("a", update_digest(update), 10, signed.public_key.hex(), signed.signature.hex())
    provenance = RoundProvenance(settings_digest({"lr": 0.1}), (contribution,), (("b", "timed_out"),))
    return RoundRecord(rnd, 2, 2, 0.25, params_for(rnd).digest, metrics={"loss": 1 / (rnd + 1)},
                       failures={"timed_out": 1}, provenance=provenance)


def with_ledger(run: RunDirectory) -> RunDirectory:
    """The run keeps a ledger, as the apps' runs do (a fixed clock: resumed runs end byte-for-byte equal)."""
    start = RunStart("fake", params_for(0).schema_digest, "fedavg", {}, {}, hashlib.sha256(CONFIG.encode()).hexdigest())
    run.attach_ledger(Ledger(derived_key(0, "server"), start, run_id="run-1", clock=lambda: 1.7e9))
    return run


class Killer:
    """Counts file-system steps in potluck.core.files and raises Killed at step ``at``."""

    def __init__(self, at: int | None) -> None:
        self.at, self.steps = at, 0

    def step(self) -> None:
        self.steps += 1
        if self.steps == self.at:
            raise Killed

    @contextmanager
    def installed(self):
        real_open, real_replace, real_remove = open, os.replace, rundir.remove
        killer = self

        class File:
            def __init__(self, *args, **kwargs):
                self.f = real_open(*args, **kwargs)

            def write(self, data):
                if killer.steps + 1 == killer.at:
                    self.f.write(data[: len(data) // 2])  # torn: half of it reached the file
                    self.f.flush()
                killer.step()
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fsync(fd):  # counted, not performed: a killed process keeps the page cache
            killer.step()

        def replace(src, dst):
            killer.step()
            real_replace(src, dst)

        def remove(path):
            killer.step()
            real_remove(path)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(files, "open", File, raising=False)
            mp.setattr(files.os, "fsync", fsync)
            mp.setattr(files.os, "replace", replace)
            for module in (rundir, resume):  # create removes leftovers, and so does resume
                mp.setattr(module, "remove", remove)
            yield self


def run_to_end(path: Path, killer: Killer | None = None) -> int:
    """Start or resume the run in ``path`` as the apps do; return the first round it ran."""
    run = with_ledger(RunDirectory(path))
    strategy = CountingStrategy()
    with (killer or Killer(None)).installed():
        params, first = open_run(run, CONFIG, params_for(0), strategy, resume=run.config_file.exists())
        for rnd in range(first, ROUNDS + 1):
            assert params == params_for(rnd - 1) and strategy.round == rnd - 1
            params, strategy.round = params_for(rnd), rnd
            run.commit(record_for(rnd), params, strategy.state())
        run.write_final(params)
    return first


def steps_of(path: Path) -> int:
    killer = Killer(None)
    run_to_end(path, killer)
    return killer.steps


def kill_at(path: Path, n: int) -> Path:
    with pytest.raises(Killed):
        run_to_end(path, Killer(n))
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def check_after_kill(path: Path) -> list[str]:
    """Invariants hold in the killed folder; returns the notes' codes."""
    if not RunDirectory(path).config_file.exists():
        assert not RunDirectory(path).committed_rounds()
        return ["no-config"]
    report = check_run_dir(path)
    assert report.ok, [f.message for f in report.findings if f.level == "broken"]
    if report.committed:  # what a kill leaves fails verify only as an unfinished last entry
        ledger = audit_ledger(path)
        assert all(p.entry == report.last_round and "--resume completes" in p.message for p in ledger.problems), \
            [str(p) for p in ledger.problems]
    return [f.code for f in report.findings if f.level == "note"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, bytes]:
    path = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_to_end(path)
    assert audit_ledger(path).ok and len(audit_ledger(path).entries) == ROUNDS + 1
    return snapshot(path)


def test_atomic_write_writes_fsyncs_renames_then_fsyncs_the_folder(tmp_path, monkeypatch):
    calls: list[tuple[str, str]] = []
    real_open, real_fsync, real_replace = open, os.fsync, os.replace

    def spy_open(path, mode="r", **kw):
        calls.append(("open", Path(path).name))
        return real_open(path, mode, **kw)

    def spy_fsync(fd):
        calls.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        real_fsync(fd)

    def spy_replace(src, dst):
        calls.append(("rename", f"{Path(src).name} -> {Path(dst).name}"))
        real_replace(src, dst)

    monkeypatch.setattr(files, "open", spy_open, raising=False)
    monkeypatch.setattr(files.os, "fsync", spy_fsync)
    monkeypatch.setattr(files.os, "replace", spy_replace)
    files.atomic_write(tmp_path / "model.safetensors", b"weights")
    tmp = f".model.safetensors.tmp-{os.getpid()}"
    assert calls == [("open", tmp), ("fsync", "file"), ("rename", f"{tmp} -> model.safetensors"), ("fsync", "folder")]
    assert files.is_temp_file(tmp) and not files.is_temp_file("model.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_a_kill_at_any_step_keeps_the_invariants_and_resume_ends_where_an_uninterrupted_run_does(
        tmp_path, reference):
    total = steps_of(tmp_path / "count")
    assert total > 50  # create, 4 commits and the final model: the harness sees every step
    notes: Counter[str] = Counter()
    for n in range(1, total + 1):
        path = kill_at(tmp_path / f"killed-at-{n}", n)
        committed = RunDirectory(path).committed_rounds()
        notes.update(check_after_kill(path))
        first = run_to_end(path)
        assert first == (committed[-1] + 1 if committed else 1), f"step {n}: resumed at round {first}"
        assert snapshot(path) == reference, f"step {n}"
    # The kills really landed in every window a commit has.
    assert {"no-config", "temp-file", "uncommitted-file", "metrics-torn", "metrics-trailing", "ledger-torn",
            "ledger-trailing"} <= set(notes)


def test_a_kill_while_resume_tidies_up_is_resumed_too(tmp_path, reference):
    total = steps_of(tmp_path / "count")
    torn = next(path for n in range(1, total + 1)
                if "metrics-torn" in check_after_kill(path := kill_at(tmp_path / f"first-{n}", n)))
    (torn / f".model.safetensors.tmp-{os.getpid() + 1}").write_bytes(b"half")  # another killed writer
    resume_steps = steps_of(_copy(torn, tmp_path / "count-resume"))
    for m in range(1, resume_steps + 1):
        path = kill_at(_copy(torn, tmp_path / f"resume-killed-at-{m}"), m)
        check_after_kill(path)
        run_to_end(path)
        assert snapshot(path) == reference, f"resume step {m}"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _committed_run(path: Path, rounds: int = ROUNDS) -> RunDirectory:
    run = with_ledger(RunDirectory(path))
    run.create(CONFIG)
    for rnd in range(rounds + 1):
        record = record_for(rnd) if rnd else RoundRecord(0, 0, 0, 0.0, params_for(0).digest)
        run.commit(record, params_for(rnd), {"momentum": np.full(3, rnd, np.float32)})
    return run


def test_failed_rename_leaves_the_previous_round_intact(tmp_path, monkeypatch):
    run = _committed_run(tmp_path / "run", rounds=1)
    before = snapshot(run.path)
    real_replace = os.replace

    def broken_replace(src, dst):
        if Path(dst).name == "round-0002.json":
            raise OSError(errno.EIO, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", broken_replace)
    with pytest.raises(RunDirError, match=r"round-0002\.json: input/output error.*round 2 was not committed; "
                                          r"round 1 and earlier are intact"):
        run.commit(record_for(2), params_for(2), {"momentum": np.full(3, 2, np.float32)})
    assert snapshot(run.path) == before  # the model and strategy files of round 2 were discarded too
    assert check_run_dir(run.path).ok
    monkeypatch.undo()
    resumed = run.prepare_resume()
    assert resumed.round == 1 and resumed.params == params_for(1)
    assert resumed.strategy_state["momentum"].tolist() == [1, 1, 1]


def test_resume_tidies_leftovers_and_rebuilds_metrics_from_the_marks(tmp_path):
    run = _committed_run(tmp_path / "run")
    good_metrics = run.metrics_file.read_bytes()
    run.metrics_file.write_bytes(good_metrics[:-40])  # torn last line
    run.write_final(params_for(ROUNDS))
    leftovers = [run.checkpoints / ".round-0004.safetensors.tmp-99", run.path / ".metrics.jsonl.tmp-98",
                 run.model_path(ROUNDS + 1), run.strategy_path(ROUNDS + 1)]
    for path in leftovers:
        path.write_bytes(b"partial")
    (run.path / ".keep-me").write_text("not ours")

    assert run.prepare_resume().round == ROUNDS
    assert run.metrics_file.read_bytes() == good_metrics
    assert not any(p.exists() for p in leftovers) and not run.model_file.exists()
    assert (run.path / ".keep-me").exists()
    assert [f.code for f in check_run_dir(run.path).findings if f.level != "ok"] == ["final-absent"]


def test_resume_refuses_a_gap_in_the_marks_and_changes_nothing(tmp_path):
    run = _committed_run(tmp_path / "run")
    run.mark_path(1).unlink()
    (run.checkpoints / ".round-0004.json.tmp-7").write_bytes(b"{")
    before = snapshot(run.path)
    with pytest.raises(RunDirError, match=r"round 1 has no commit mark although round 3 has.*potluck check"):
        run.prepare_resume()
    assert snapshot(run.path) == before


def test_resume_refuses_a_damaged_last_round_and_says_how_to_go_back_one(tmp_path):
    run = _committed_run(tmp_path / "run")
    data = bytearray(run.model_path(3).read_bytes())
    data[-1] ^= 0xFF
    run.model_path(3).write_bytes(bytes(data))
    before = snapshot(run.path)
    with pytest.raises(RunDirError, match=r"round 3: the model .* does not match the SHA-256 .* delete .*round-0003\.\* "
                                          r"and the last line of .*ledger\.jsonl"):
        run.prepare_resume()
    assert snapshot(run.path) == before
    for path in run.checkpoints.glob("round-0003.*"):
        path.unlink()
    with pytest.raises(RunDirError, match=r"holds entry 3, but round 3 is not committed .* keep only the first 3 lines"):
        run.prepare_resume()  # dropping a committed entry rewrites history: only on purpose
    lines = run.ledger_file.read_bytes().splitlines(keepends=True)
    run.ledger_file.write_bytes(b"".join(lines[:3]))
    assert run.prepare_resume().round == 2


def test_new_run_may_reuse_a_folder_only_while_nothing_is_committed(tmp_path):
    run = RunDirectory(tmp_path / "run")
    run.create("first = 1\n")
    (run.checkpoints / ".round-0000.safetensors.tmp-5").write_bytes(b"half")
    run.create(CONFIG)  # stopped before round 0 was committed: start afresh
    assert run.read_config() == CONFIG and not run.leftovers(-1)
    run.commit(RoundRecord(0, 0, 0, 0.0, params_for(0).digest), params_for(0), {})
    with pytest.raises(RunDirError, match="already holds a run"):
        run.create(CONFIG)


def test_records_skip_a_line_still_being_appended(tmp_path):
    run = _committed_run(tmp_path / "run", rounds=2)
    with open(run.metrics_file, "a") as f:
        f.write('{"round": 3, "accu')  # what a reader following the run can see mid-append
    assert [r.round for r in run.records()] == [1, 2]


def test_new_run_refuses_a_folder_whose_marks_were_deleted(tmp_path):
    run = _committed_run(tmp_path / "run")
    for mark in run.checkpoints.glob("*.json"):
        mark.unlink()
    with pytest.raises(RunDirError, match=r"holds checkpoints \(round-0001\.safetensors, …\) but no commit mark"):
        run.create(CONFIG)
    assert run.model_path(3).exists()
