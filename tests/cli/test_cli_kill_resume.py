"""`potluck simulate` SIGKILLed at seeded random moments, resumed each time, ends where an
uninterrupted run ends. After every kill the run directory passes `potluck check`.

No wait here is a fixed number of seconds: the uninterrupted run is timed first, and
every later deadline is a generous multiple of it, so a busy machine only makes the
test slower. (The timeouts of the uninterrupted run itself only catch a hang.)"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from potluck.apps.check import check_run_dir

POTLUCK = [sys.executable, "-m", "potluck.cli"]
ARGS = ["simulate", "--rounds", "20", "--nodes", "4", "--fit", "epochs=1"]
KILLS = 4
SEED = 7
HANG = 1800  # seconds: a run that takes longer than this has hung, whatever the machine


def marks(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("round-*.json")) if (run / "checkpoints").is_dir() else []


def wait_for(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not condition():
        time.sleep(0.01)


def command(run: Path) -> list[str]:
    """Resume when the run has a config (as a person would); start afresh otherwise."""
    resume = ["--resume"] if (run / "config.toml").exists() else []
    return [*POTLUCK, *ARGS, "--run-dir", run.name, *resume]


def state(run: Path) -> dict[str, object]:
    """What must not depend on the kills: every round's files, records and the final model."""
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {
        "marks": [_deterministic(json.loads((run / "checkpoints" / m).read_text())) for m in marks(run)],
        "metrics": [{k: v for k, v in line.items() if k != "seconds"} for line in metrics],
        "model": (run / "model.safetensors").read_bytes(),
    }


# A ledger entry also names its run (a fresh id per run directory, the start time) and is
# chained and signed over those, as are the nodes' signatures: what must match is what
# the round computed and who contributed what.
LEDGER_FIGURES = ("round", "model_digest", "strategy_digest", "settings_digest", "examples", "failures", "attempts")


def _deterministic(mark: dict) -> dict:
    out = {k: v for k, v in mark.items() if k not in ("record", "ledger")}
    if "ledger" in mark:
        entry = mark["ledger"]
        out["ledger"] = {k: entry.get(k) for k in LEDGER_FIGURES}
        out["ledger"]["contributions"] = [{k: v for k, v in c.items() if k != "signature"}
                                          for c in entry.get("contributions", [])]
    return out


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path):
    started = time.monotonic()
    whole = subprocess.run([*POTLUCK, *ARGS, "--run-dir", "whole"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=HANG)
    assert whole.returncode == 0, whole.stderr
    measured = time.monotonic() - started  # start-up and 20 rounds on this machine, as loaded as it is now
    patience = 3 * measured + 30  # ample for any part of a run: start-up, one commit, the rest of it

    rng = random.Random(SEED)
    run = tmp_path / "cut"
    killed_after: list[int] = []
    for _ in range(KILLS):
        before = len(marks(run))
        proc = subprocess.Popen(command(run), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if rng.random() < 0.25:  # somewhere in start-up, resume's tidying or the first two rounds
            # (a random share of a whole run's time, cut short after two commits, so a machine
            # that got faster since it was timed cannot let the run finish before the kill)
            wait_for(lambda before=before: len(marks(run)) > before + 1, proc, rng.uniform(0.05, 0.5) * measured)
        else:  # once it writes: right after the config (new run) or a new commit (resumed run)
            def writing(before: int = before) -> bool:
                return len(marks(run)) > before if before else (run / "config.toml").exists()

            wait_for(writing, proc, patience)
            time.sleep(rng.uniform(0.0, 0.25))
        if proc.poll() is not None:
            break  # it finished first; the kills so far still count
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=patience)
        killed_after.append(len(marks(run)) - 1)
        if (run / "config.toml").exists():
            report = check_run_dir(run)
            assert report.ok, [f.message for f in report.findings if f.level == "broken"]
    assert len(killed_after) >= 3 and killed_after[-1] < 20, killed_after

    last = len(marks(run)) - 1
    final = subprocess.run(command(run), cwd=tmp_path, capture_output=True, text=True, timeout=patience)
    assert final.returncode == 0, final.stderr
    if last > 0:
        assert f"resumed after round {last}" in final.stdout
    assert state(run) == state(tmp_path / "whole")
    report = check_run_dir(run)
    assert report.ok and {f.level for f in report.findings} == {"ok"}  # no leftovers either (notes)
