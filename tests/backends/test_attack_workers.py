"""Simulated attacks reach every backend: worker processes rebuild the attackers from the spec."""

from __future__ import annotations

import pytest

from potluck.apps.simulate import federation_spec, run_simulation
from potluck.core.config import SimulationConfig
from potluck.runtime.attacks import choose_attackers
from potluck.runtime.federation import build_federation

ATTACK = dict(rounds=2, nodes=5, attack="sign-flip", attack_fraction=0.4)


def test_in_process_attackers_change_the_model(tmp_path, small_config):
    attacked = run_simulation(small_config(tmp_path / "a", **{**ATTACK, "rounds": 1}))
    clean = run_simulation(small_config(tmp_path / "b", rounds=1, nodes=5))
    assert attacked.final_params.digest != clean.final_params.digest


def test_the_federation_names_its_attackers():
    spec = federation_spec(SimulationConfig.from_mapping({**ATTACK, "seed": 4}))
    federation = build_federation(spec)
    assert sorted(federation.attacks) == choose_attackers(list(federation.nodes), 0.4, 4)
    assert len(federation.attacks) == 2 and {a.kind for a in federation.attacks.values()} == {"sign-flip"}


@pytest.mark.slow
def test_worker_processes_apply_the_same_attacks(tmp_path, small_config):
    in_process = run_simulation(small_config(tmp_path / "a", **ATTACK))
    workers = run_simulation(small_config(tmp_path / "b", workers=2, **ATTACK))
    assert workers.final_params.digest == in_process.final_params.digest  # which differs from a clean run's (above)
