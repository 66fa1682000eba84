"""Group formation and adaptive deadlines (pure parts of matchmaking)."""

from __future__ import annotations

import pytest

from potluck.core.errors import ConfigError
from potluck.peer.matchmaking import Deadlines, form_groups


def test_groups_partition_the_ready_peers_the_same_way_everywhere():
    ready = [f"p{i:02d}" for i in range(11)]
    groups = form_groups(ready, 4, seed=0, step=3)
    assert sorted(p for g in groups for p in g) == ready
    assert sorted(len(g) for g in groups) == [3, 4, 4]
    assert form_groups(list(reversed(ready)), 4, seed=0, step=3) == groups, "order of discovery does not matter"
    assert form_groups(ready, 4, seed=0, step=4) != groups, "groups change from step to step"
    assert form_groups(["a", "b", "c"], 8, seed=0, step=1) == [("a", "b", "c")]
    with pytest.raises(ConfigError):
        form_groups(ready, 1, seed=0, step=1)


def test_deadlines_follow_measured_speed_within_floor_and_ceiling():
    d = Deadlines(floor=2.0, ceiling=30.0, ttl=4.0)
    assert d.matchmaking() == d.allreduce() == 30.0, "nothing measured yet: the ceiling"
    d.observe_inner(10.0)
    d.observe_allreduce(0.1)
    assert d.matchmaking() == 14.0 and d.allreduce() == 2.0
    d.observe_allreduce(5.0)
    assert d.allreduce() == 20.0
    d.observe_allreduce(50.0)
    assert d.allreduce() == 30.0
    with pytest.raises(ConfigError):
        Deadlines(floor=5.0, ceiling=1.0)
