"""Simulated attacks: what an attacker sends, who attacks, and how the settings are checked."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.config import ATTACKS, SimulationConfig
from potluck.core.errors import ConfigError
from potluck.core.messages import FitInstruction
from potluck.core.params import Params, ParamsKind
from potluck.runtime.attacks import SCALE, Attack, attacker_count, choose_attackers
from potluck.runtime.node import NodeData, NodeRunner
from potluck.tasks.protocol import FitOutput

HONEST = Params.from_arrays(
    {"w": np.linspace(-1, 1, 400, dtype=np.float32).reshape(20, 20), "b": np.array([0.5, -2.0], np.float32),
     "count": np.array(7, np.int64)},
    ParamsKind.DELTA,
)


def test_sign_flip_and_scale():
    flipped = Attack("sign-flip").apply(HONEST, seed=1)
    scaled = Attack("scale").apply(HONEST, seed=1)
    assert flipped.kind is scaled.kind is ParamsKind.DELTA and flipped.schema == HONEST.schema
    np.testing.assert_array_equal(flipped["w"], -HONEST["w"])
    np.testing.assert_array_equal(scaled["b"], np.array([50.0, -200.0], np.float32))
    assert SCALE == 100.0
    assert flipped["count"] == scaled["count"] == 7  # integer counters are sent as computed


def test_random_has_the_honest_norm_scale_and_follows_the_seed():
    a = Attack("random").apply(HONEST, seed=3)
    assert a.schema == HONEST.schema and a["count"] == 7
    assert a.digest == Attack("random").apply(HONEST, seed=3).digest
    assert a.digest != Attack("random").apply(HONEST, seed=4).digest
    honest_norm = np.linalg.norm(HONEST["w"])
    assert 0.8 * honest_norm < np.linalg.norm(a["w"]) < 1.2 * honest_norm
    assert abs(np.corrcoef(a["w"].ravel(), HONEST["w"].ravel())[0, 1]) < 0.2  # no honest direction
    zero = Params.from_arrays({"w": np.zeros(3, np.float32)}, ParamsKind.DELTA)
    assert not Attack("random").apply(zero, seed=1)["w"].any()


def test_unknown_attack():
    for kind in ("none", "flip"):
        with pytest.raises(ConfigError, match="valid attacks: sign-flip, scale, random"):
            Attack(kind)


def test_attackers_are_a_seeded_choice():
    ids = [f"node-{i:03d}" for i in range(20)]
    chosen = choose_attackers(ids, 0.2, seed=0)
    assert len(chosen) == 4 and chosen == sorted(chosen) and set(chosen) <= set(ids)
    assert choose_attackers(ids, 0.2, seed=0) == chosen
    assert choose_attackers(ids, 0.2, seed=1) != chosen
    assert set(choose_attackers(ids, 0.1, seed=0)) <= set(chosen)  # the first k of one permutation
    assert [attacker_count(f, 10) for f in (0.0, 0.04, 0.05, 0.15, 0.3, 1.0)] == [0, 0, 1, 2, 3, 10]


class Echo:
    """A Task whose training moves every value by +1."""

    def fit(self, params, data, config, seed):
        return FitOutput(Params.from_arrays({k: v + 1 for k, v in params.items()}), 10, {})


def test_node_runner_corrupts_only_attackers():
    start = Params.from_arrays({"w": np.zeros(2, np.float32)})
    no_data = NodeData([], [])  # type: ignore[arg-type]  # Echo trains on nothing
    runner = NodeRunner(Echo(), {"a": no_data, "b": no_data}, {"b": Attack("scale")})  # type: ignore[arg-type]
    honest = runner.fit(FitInstruction(1, "a", start, {}, 5))
    attacker = runner.fit(FitInstruction(1, "b", start, {}, 5))
    assert honest.params["w"].tolist() == [1.0, 1.0]
    assert attacker.params["w"].tolist() == [100.0, 100.0] and attacker.num_examples == 10


def test_config_checks_the_attack_settings():
    assert ATTACKS == ("none", "sign-flip", "scale", "random")
    ok = SimulationConfig.from_mapping({"nodes": 20, "attack": "scale", "attack_fraction": 0.2})
    assert (ok.attack, ok.attack_fraction) == ("scale", 0.2)
    assert 'attack = "scale"' in ok.to_toml()
    bad = [
        ({"attack": "flip"}, "attack must be one of none, sign-flip, scale, random, got 'flip'"),
        ({"attack_fraction": 0.2}, r"attack_fraction must be 0 when attack is none \(choose an attack too\), got 0.2"),
        ({"attack": "scale"}, "attack_fraction must be large enough for at least one of the 10 nodes to attack"),
        ({"attack": "scale", "attack_fraction": 0.04}, "attack_fraction must be large enough for at least one of the 10"),
        ({"attack": "random", "attack_fraction": 1.5}, r"attack_fraction must be in \[0, 1\], got 1.5"),
        ({"attack": "random", "attack_fraction": float("nan")}, r"attack_fraction must be in \[0, 1\], got nan"),
        ({"attack": "random", "attack_fraction": "0.2"}, "attack_fraction must be a number"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=f"^my.toml: {message}"):
            SimulationConfig.from_mapping(values, source="my.toml")
    # the config's rule and attacker_count agree on when someone attacks
    for nodes in (1, 3, 10, 20):
        for fraction in np.linspace(0.01, 1, 100):
            attacks = fraction * nodes >= 0.5
            assert attacks == (attacker_count(float(fraction), nodes) >= 1), (nodes, fraction)
