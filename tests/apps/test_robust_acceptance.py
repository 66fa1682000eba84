"""Robust aggregation end to end: 4 of 20 digits nodes send their update ×100.

FedAvg collapses to chance; Multi-Krum and the trimmed mean end no more than 3 points
below the clean FedAvg run (they may end above it: the ×100 updates point the honest
way, so what survives trimming is biased toward a longer honest step). The figures are
in docs/robustness.md. IID split: on a non-IID split the robust rules lose accuracy
even without attackers (see the docs).
"""

from __future__ import annotations

import pytest

from potluck.apps.simulate import run_simulation

SETTINGS = dict(nodes=20, rounds=15, partition="iid", fit={"epochs": 1, "batch_size": 8})
ATTACK = dict(attack="scale", attack_fraction=0.2)


def final_accuracy(make, tmp_path, name: str, **changes) -> float:
    result = run_simulation(make(tmp_path / name, **SETTINGS, **changes))
    assert [r.num_nodes for r in result.records] == [20] * 15  # attackers' updates are accepted, not rejected
    return result.records[-1].metrics["accuracy"]


@pytest.mark.slow
def test_multi_krum_and_trimmed_mean_survive_an_attack_that_breaks_fedavg(tmp_path, small_config):
    clean = final_accuracy(small_config, tmp_path, "clean")
    attacked = final_accuracy(small_config, tmp_path, "fedavg", **ATTACK)
    multi_krum = final_accuracy(small_config, tmp_path, "multi-krum", strategy="multi-krum",
                                strategy_options={"byzantine": 4}, **ATTACK)
    trimmed = final_accuracy(small_config, tmp_path, "trimmed", strategy="trimmed-mean",
                             strategy_options={"trim": 0.2}, **ATTACK)
    figures = f"clean {clean:.4f}, fedavg {attacked:.4f}, multi-krum {multi_krum:.4f}, trimmed {trimmed:.4f}"
    assert clean >= 0.9, figures
    assert attacked < 0.2, figures  # about chance (10 classes)
    assert multi_krum >= clean - 0.03, figures
    assert trimmed >= clean - 0.03, figures
