"""One resume rule for simulate and server: a setting declared resumable may change, no other."""

from __future__ import annotations

import pytest

from potluck.apps.server import run_server
from potluck.apps.simulate import run_simulation
from potluck.core.config import ServerConfig
from potluck.core.errors import RoundFailed, RunDirError


class CrashAfter:
    def __init__(self, k: int) -> None:
        self.k = k

    def on_commit(self, record, params, strategy):
        if record.round == self.k:
            raise KeyboardInterrupt


def test_simulate_resume_refuses_a_fixed_setting_and_takes_resumable_ones(tmp_path, small_config):
    cfg = small_config(tmp_path, rounds=3, nodes=3)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, hooks=[CrashAfter(1)])
    for changed in ({"seed": 3}, {"fraction": 0.5}, {"compression": "quantize"}):
        with pytest.raises(RunDirError, match=rf"other settings \({next(iter(changed))}\)"):
            run_simulation(cfg.replace(**changed), resume=True)
    resumed = run_simulation(cfg.replace(rounds=4, quorum=1.0, round_timeout=300.0, max_retries=0), resume=True)
    assert resumed.resumed_from == 1 and [r.round for r in resumed.records] == [1, 2, 3, 4]


def test_server_restart_refuses_a_fixed_setting_and_takes_resumable_ones(tmp_path):
    # No node ever joins: each start commits (or finds) round 0, then gives up waiting.
    config = ServerConfig(bind="127.0.0.1:0", insecure=True, bulk="off", run_dir=str(tmp_path / "run"),
                          wait_for_nodes=0.2, rounds=2)
    with pytest.raises(RoundFailed, match="only 0 of min_nodes=1 nodes joined"):
        run_server(config)
    for changed in ({"seed": 3}, {"min_nodes": 2}, {"dp": "local"}, {"strategy": "fedadam"}):
        with pytest.raises(RunDirError, match=rf"other settings \({next(iter(changed))}\)"):
            run_server(config.replace(**changed))
    with pytest.raises(RoundFailed, match="nodes joined"):  # past the resume check: waiting for nodes again
        run_server(config.replace(rounds=5, round_timeout=30.0, quorum=1.0, allow=["a"], wait_for_nodes=0.1))
