"""Differential privacy end to end: settings → protections → a short simulation."""

from __future__ import annotations

import json

import pytest
from dp_accounting import dp_event
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

from potluck.apps.protections import protect_strategy, round_guards, update_pipeline
from potluck.apps.simulate import run_simulation
from potluck.core.config import ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError
from potluck.strategies import make_strategy
from potluck.strategies.central_dp import CentralDP
from potluck.updates.local_dp import GaussianDP


def library_epsilon(q: float, z: float, rounds: int, delta: float = 1e-5) -> float:
    accountant = RdpAccountant()
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), rounds)
    return accountant.get_epsilon(delta)


class CrashAfter:
    def __init__(self, k: int) -> None:
        self.k = k

    def on_commit(self, record, params, strategy):
        if record.round == self.k:
            raise KeyboardInterrupt


def test_settings_build_the_stage_the_wrapper_and_the_accountant():
    sim = SimulationConfig(nodes=20, fraction=0.25, dp="distributed", dp_noise_multiplier=0.8, dp_clip=0.5)
    (stage,) = update_pipeline(sim).stages
    assert isinstance(stage, GaussianDP) and (stage.mode, stage.nodes, stage.clip) == ("distributed", 5, 0.5)
    wrapped = protect_strategy(sim, make_strategy("fedavgm"))
    assert isinstance(wrapped, CentralDP) and wrapped.clip is None and wrapped.expected == 5
    (guard,) = round_guards(sim)
    assert guard.q == 0.25 and guard.noise_multiplier == 0.8

    central = SimulationConfig(nodes=20, dp="central")
    assert not update_pipeline(central) and isinstance(protect_strategy(central, make_strategy("fedavg")), CentralDP)
    local = SimulationConfig(nodes=20, dp="local")
    assert protect_strategy(local, make_strategy("median")).name == "median"  # local noise: any rule may follow
    assert round_guards(SimulationConfig()) == [] and not update_pipeline(SimulationConfig())

    server = ServerConfig(min_nodes=4, fraction=0.5, dp="central", dp_nodes=40)
    assert round_guards(server)[0].q == 20 / 40 and protect_strategy(server, make_strategy("fedavg")).expected == 20


def test_bad_combinations_are_config_errors_naming_the_setting():
    with pytest.raises(ConfigError, match="cannot be combined with strategy krum"):
        protect_strategy(SimulationConfig(dp="central"), make_strategy("krum"))
    with pytest.raises(ConfigError, match="dp_epsilon_budget must be left at 0.0 unless dp is set"):
        SimulationConfig(dp_epsilon_budget=3.0)
    with pytest.raises(ConfigError, match="dp_adaptive_clip must be false unless dp is central"):
        SimulationConfig.from_mapping({"dp": "local", "dp_adaptive_clip": True})


def test_budget_stops_the_run_cleanly_and_metrics_carry_epsilon(tmp_path, small_config):
    budget = (library_epsilon(1.0, 1.0, 2) + library_epsilon(1.0, 1.0, 3)) / 2
    result = run_simulation(small_config(tmp_path, rounds=5, dp="central", dp_epsilon_budget=budget))
    assert [r.round for r in result.records] == [1, 2]
    assert result.stopped == (f"privacy budget ε={budget:g} would be exceeded in round 3 "
                              f"(ε would reach {library_epsilon(1.0, 1.0, 3):.3f}); stopping after round 2")
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    eps = [line["extras"]["epsilon"] for line in lines]
    assert eps == [library_epsilon(1.0, 1.0, k) for k in (1, 2)] and eps[0] < eps[1] <= budget
    assert all(line["extras"]["delta"] == 1e-5 for line in lines)
    assert result.final_params.digest == lines[-1]["model_digest"]


def test_resume_continues_the_noise_the_clip_and_epsilon(tmp_path, small_config):
    settings = dict(rounds=3, nodes=10, fraction=0.5, dp="central", dp_noise_multiplier=0.8, dp_adaptive_clip=True)
    whole = run_simulation(small_config(tmp_path / "whole", **settings))
    cut = small_config(tmp_path / "cut", **settings)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cut, hooks=[CrashAfter(1)])
    resumed = run_simulation(cut, resume=True)
    assert resumed.resumed_from == 1 and resumed.final_params.digest == whole.final_params.digest
    assert [r.extras["epsilon"] for r in resumed.records] == [r.extras["epsilon"] for r in whole.records]
    assert [r.extras["epsilon"] for r in whole.records] == [library_epsilon(0.5, 0.8, k) for k in (1, 2, 3)]


def test_distributed_mode_runs_with_noise_added_on_the_nodes(tmp_path, small_config):
    plain = run_simulation(small_config(tmp_path / "plain", rounds=2, dp="distributed", dp_noise_multiplier=1e-9))
    noisy = run_simulation(small_config(tmp_path / "noisy", rounds=2, dp="distributed"))
    assert plain.final_params.digest != noisy.final_params.digest
    assert [r.extras["epsilon"] for r in noisy.records] == [library_epsilon(1.0, 1.0, k) for k in (1, 2)]


def test_up_passes_the_privacy_settings_to_its_server_and_reads_back_its_stop(tmp_path):
    from potluck.apps.up import server_command, server_stop_reason

    cfg = SimulationConfig(nodes=4, dp="central", dp_noise_multiplier=0.7, dp_epsilon_budget=9.0,
                           dp_adaptive_clip=True, run_dir=str(tmp_path))
    cmd = server_command(cfg, tmp_path, tmp_path / "test.npz")
    flags = dict(zip(cmd, cmd[1:]))
    assert (flags["--dp"], flags["--dp-noise-multiplier"], flags["--dp-epsilon-budget"], flags["--dp-nodes"]) == \
        ("central", "0.7", "9.0", "4")
    assert "--dp-adaptive-clip" in cmd and "--dp" not in server_command(SimulationConfig(), tmp_path, tmp_path)
    log = tmp_path / "server.log"
    log.write_text("potluck server: 2 rounds committed\npotluck server: stopped after round 2: privacy budget ε=9\n")
    assert server_stop_reason(log) == "privacy budget ε=9"
    log.write_text(json.dumps({"message": "potluck server: stopped after round 1: budget"}) + "\n")
    assert server_stop_reason(log) == "budget"
    log.write_text("potluck server: 3 rounds committed\n")
    assert server_stop_reason(log) is None
