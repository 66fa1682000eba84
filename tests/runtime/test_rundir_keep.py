"""``--keep-checkpoints N`` (and ``--keep-every k``) bound a run's disk use: only the last
N rounds' model and strategy files stay, with round 0 and every k-th round; marks stay,
so resume, ``potluck check`` and the ledger audit still hold."""

from __future__ import annotations

import pytest

from potluck.apps.check import check_run_dir
from potluck.apps.simulate import run_simulation
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError
from potluck.core.layout import checkpoint_kept
from potluck.ledger.audit import audit_ledger
from potluck.runtime.rundir import RunDirectory


def test_which_rounds_are_kept():
    kept = [r for r in range(13) if checkpoint_kept(r, 12, keep=3, every=5)]
    assert kept == [0, 5, 10, 11, 12]
    assert [r for r in range(13) if checkpoint_kept(r, 12, keep=2, every=0)] == [0, 11, 12]
    assert all(checkpoint_kept(r, 12, keep=0, every=0) for r in range(13))  # 0: keep all


def test_negative_settings_are_refused():
    with pytest.raises(ConfigError, match="keep_checkpoints must be ≥ 0"):
        SimulationConfig(keep_checkpoints=-1)


def _files(run_dir) -> list[int]:
    return sorted(int(p.name[6:10]) for p in (run_dir / "checkpoints").glob("round-*.strategy.safetensors"))


def test_a_run_keeps_only_what_it_was_told_and_still_checks_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    config = SimulationConfig(rounds=7, nodes=3, keep_checkpoints=2, keep_every=3, run_dir=str(run_dir),
                              fit={"epochs": 1})
    run_simulation(config)
    assert _files(run_dir) == [0, 3, 6, 7]
    assert (run_dir / "checkpoints" / "round-0007.safetensors").exists()
    assert len(RunDirectory(run_dir).committed_rounds()) == 8  # every mark stays
    assert check_run_dir(run_dir).ok
    assert audit_ledger(run_dir).ok
    resumed = run_simulation(config.replace(rounds=9), resume=True)
    assert resumed.resumed_from == 7 and resumed.records[-1].round == 9
    assert _files(run_dir) == [0, 3, 6, 8, 9]
    assert check_run_dir(run_dir).ok and audit_ledger(run_dir).ok


def test_a_missing_file_the_setting_keeps_is_still_reported(tmp_path):
    run_dir = tmp_path / "run"
    run_simulation(SimulationConfig(rounds=3, nodes=3, keep_checkpoints=1, run_dir=str(run_dir), fit={"epochs": 1}))
    (run_dir / "checkpoints" / "round-0003.strategy.safetensors").unlink()
    assert not check_run_dir(run_dir).ok
    assert not audit_ledger(run_dir).ok
