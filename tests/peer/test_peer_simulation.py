"""Virtual peers in one process: the outer step against a hand computation, crashes, determinism."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from potluck.core.errors import ConfigError
from potluck.peer.diloco import flatten, unflatten
from potluck.peer.runner import split_holdout
from potluck.peer.simulation import SimSettings, simulate_peers
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.partition import iid
from potluck.tasks.protocol import DataInfo


@pytest.fixture(scope="module")
def setup():
    task = resolve_task("digits")
    data = task.load_data(None)
    splits = [split_holdout(data.subset(p), 0) for p in iid(len(data), 6, 0)]
    return task, splits, task.build(DataInfo.from_dataset(data), 0)


def test_one_group_matches_the_diloco_step_computed_by_hand(setup):
    task, splits, initial = setup
    settings = SimSettings(outer_steps=1, group_size=8, outer_lr=0.7, outer_momentum=0.9)
    steps = simulate_peers(task, splits[:3], initial, settings)
    assert steps[0].distinct_models == 1 and steps[0].groups == [("peer-000", "peer-001", "peer-002")]
    grads, weights = [], []
    for i, (train, _) in enumerate(splits[:3]):
        out = task.fit(initial, train, {"epochs": 1}, zlib.crc32(f"0:peer-{i:03d}:1".encode()))
        grads.append(flatten(initial) - flatten(out.params))
        weights.append(out.num_examples)
    g = np.average(np.stack(grads), axis=0, weights=weights)
    expected = flatten(initial) - 0.7 * (g + 0.9 * g)  # v = g after the first step
    again = simulate_peers(task, splits[:3], initial, settings)
    assert again[0].losses == steps[0].losses
    model = unflatten(expected.astype(np.float32), initial)
    for i, (_, held) in enumerate(splits[:3]):
        assert steps[0].losses[f"peer-{i:03d}"] == pytest.approx(task.evaluate(model, held).loss, rel=1e-4)


def test_crashes_lose_parts_but_the_swarm_learns_and_repeats_bit_for_bit(setup):
    task, splits, initial = setup
    settings = SimSettings(outer_steps=4, group_size=3, drop=0.3, seed=5)
    first = simulate_peers(task, splits, initial, settings)
    second = simulate_peers(task, splits, initial, settings)
    assert [s.losses for s in first] == [s.losses for s in second]
    assert sum(len(s.dropped) for s in first) > 0
    assert first[-1].mean_loss < first[0].mean_loss
    with pytest.raises(ConfigError):
        SimSettings(drop=1.0)
