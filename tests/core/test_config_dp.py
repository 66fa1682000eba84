"""Differential privacy settings: TOML keys, ranges, and settings that need `dp`."""

from __future__ import annotations

import math

import pytest

from potluck.core.config import ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError


def test_toml_keys_load_and_round_trip(tmp_path):
    path = tmp_path / "dp.toml"
    path.write_text('nodes = 40\ndp = "central"\ndp_noise_multiplier = 0.8\ndp_clip = 0.5\n'
                    'dp_adaptive_clip = true\ndp_target_quantile = 0.7\ndp_delta = 1e-6\ndp_epsilon_budget = 8\n')
    cfg = SimulationConfig.load(path)
    assert (cfg.dp, cfg.dp_noise_multiplier, cfg.dp_clip, cfg.dp_adaptive_clip) == ("central", 0.8, 0.5, True)
    assert (cfg.dp_target_quantile, cfg.dp_delta, cfg.dp_epsilon_budget) == (0.7, 1e-6, 8.0)
    (tmp_path / "again.toml").write_text(cfg.to_toml())
    assert SimulationConfig.load(tmp_path / "again.toml") == cfg
    server = tmp_path / "server.toml"
    server.write_text('dp = "distributed"\ndp_nodes = 30\nmin_nodes = 3\n')
    assert ServerConfig.load(server).dp_nodes == 30


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dp": "global"}, "dp must be one of none, central, local, distributed"),
        ({"dp": "central", "dp_noise_multiplier": 0.0}, "dp_noise_multiplier must be a finite number > 0"),
        ({"dp": "central", "dp_clip": math.inf}, "dp_clip must be a finite number > 0"),
        ({"dp": "central", "dp_delta": 0.5}, "dp_delta must be below 1 / nodes = 1 / 10"),
        ({"dp": "central", "dp_epsilon_budget": -1}, "dp_epsilon_budget must be a finite number ≥ 0"),
        ({"dp": "central", "dp_target_quantile": 0.9}, "dp_target_quantile must be left at 0.5 unless dp_adaptive_clip"),
        ({"dp": "distributed", "dp_adaptive_clip": True}, "dp_adaptive_clip must be false unless dp is central"),
        ({"dp_noise_multiplier": 2.0}, "dp_noise_multiplier must be left at 1.0 unless dp is set"),
        ({"dp": "central", "dp_clip": "big"}, "dp_clip must be a number"),
    ],
)
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        SimulationConfig.from_mapping(settings)


def test_server_population_is_dp_nodes_or_min_nodes():
    with pytest.raises(ConfigError, match="dp_nodes must be ≥ min_nodes"):
        ServerConfig(min_nodes=5, dp="central", dp_nodes=3)
    with pytest.raises(ConfigError, match="1 / nodes = 1 / 2"):
        ServerConfig(dp="central", dp_delta=0.6, min_nodes=2)
    assert ServerConfig(dp="central", dp_nodes=100, dp_delta=0.009).dp_delta == 0.009
