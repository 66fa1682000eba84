"""Many virtual peers in one process: the peer mode's algorithm, for research.

The same code decides and computes as on the network: groups come from
:func:`~potluck.peer.matchmaking.form_groups`, averages from
:func:`~potluck.peer.allreduce.butterfly` (the part reducers and assembly the lane
uses), mixing of differing anchors from :func:`~potluck.peer.diloco.mixed_vector`, the
outer step from :class:`~potluck.peer.diloco.NesterovOuter`. What is simulated is the
network: ``drop`` is the probability that a member crashes in a given step, part way
through sending its chunks (a seeded point), after which it sends nothing more; it
restarts from its last committed step and rejoins the next step, so its anchor then
differs and its next group mixes anchors. The draws are seeded, so a run repeats bit
for bit. One Task instance serves every virtual peer in turn.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from potluck.core.errors import ConfigError
from potluck.core.params import Params
from potluck.peer.allreduce import butterfly, part_bounds
from potluck.peer.diloco import NesterovOuter, mixed_vector, pseudo_gradient, split_mixed, unflatten
from potluck.peer.matchmaking import form_groups
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import Task


@dataclass(frozen=True)
class SimSettings:
    outer_steps: int = 5
    inner_epochs: int = 1
    group_size: int = 8
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    drop: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.outer_steps < 1 or self.inner_epochs < 1:
            raise ConfigError("outer steps and inner epochs must be at least 1")
        if not 0.0 <= self.drop < 1.0:
            raise ConfigError(f"--drop must be in [0, 1), got {self.drop}")


@dataclass
class _Peer:
    train: Dataset
    held_out: Dataset
    anchor: Params
    outer: NesterovOuter


@dataclass(frozen=True)
class SimStep:
    """One outer step of the whole swarm."""

    step: int
    mean_loss: float
    losses: dict[str, float]
    groups: list[tuple[str, ...]]
    dropped: list[str]
    lost_parts: int
    distinct_models: int


def simulate_peers(task: Task, data: Sequence[tuple[Dataset, Dataset]], initial: Params, settings: SimSettings,
                   on_step: Callable[[SimStep], None] | None = None) -> list[SimStep]:
    """Run ``settings.outer_steps`` steps of ``len(data)`` virtual peers (train, held-out) from ``initial``."""
    peers = {f"peer-{i:03d}": _Peer(train, held, initial, NesterovOuter(lr=settings.outer_lr,
                                                                        momentum=settings.outer_momentum))
             for i, (train, held) in enumerate(data)}
    steps = []
    for step in range(1, settings.outer_steps + 1):
        rng = np.random.default_rng([settings.seed, step])
        dropped = sorted(p for p in peers if rng.random() < settings.drop)
        lost = 0
        groups = form_groups(list(peers), settings.group_size, settings.seed, step)
        grads = {p: _train(task, peers[p], settings, p, step) for p in peers}
        for group in groups:
            lost += _average(group, peers, grads, dropped, step, settings.seed)
        losses = {p: task.evaluate(peer.anchor, peer.held_out).loss for p, peer in peers.items()}
        record = SimStep(step, float(np.mean(list(losses.values()))), losses, groups, dropped, lost,
                         len({peer.anchor.digest for peer in peers.values()}))
        steps.append(record)
        if on_step is not None:
            on_step(record)
    return steps


def _train(task: Task, peer: _Peer, settings: SimSettings, name: str, step: int) -> tuple[np.ndarray, float]:
    seed = zlib.crc32(f"{settings.seed}:{name}:{step}".encode())
    out = task.fit(peer.anchor, peer.train, {"epochs": settings.inner_epochs}, seed)
    return pseudo_gradient(peer.anchor, out.params), float(out.num_examples)


def _average(group: tuple[str, ...], peers: dict[str, _Peer], grads: dict[str, tuple[np.ndarray, float]],
             dropped: Sequence[str], step: int, seed: int) -> int:
    """Average one group as the lane would; returns the parts lost to dropped members."""
    mixed = len({peers[p].anchor.digest for p in group}) > 1
    vectors = {p: mixed_vector(peers[p].anchor, peers[p].outer.velocity, grads[p][0]) if mixed else grads[p][0]
               for p in group}
    draw = np.random.default_rng([seed, step, 1])
    cut = {p: draw.random() for p in dropped}  # how far into the reduction each dropped member got

    def delivered(sender: str, receiver: str, phase: str) -> bool:
        for p, when in cut.items():
            if p in (sender, receiver) and (phase == "gather" or (sender == p and group.index(receiver) / len(group) >= when)):
                return False
        return True

    outcomes = butterfly(vectors, {p: grads[p][1] for p in group}, delivered) if len(group) > 1 else {}
    lost = 0
    for p in (p for p in group if p not in dropped):  # a dropped member restarts from its last commit
        peer, outcome = peers[p], outcomes.get(p)
        values = grads[p][0] if outcome is None else outcome.values
        if outcome is not None and mixed:
            bounds = part_bounds(vectors[p].shape[0], len(group))
            theta, velocity, values = split_mixed(values, vectors[p], [bounds[i] for i in outcome.missing_parts])
            peer.anchor, peer.outer.velocity = unflatten(theta, peer.anchor), velocity
        lost = max(lost, 0 if outcome is None else len(outcome.missing_parts))
        peer.anchor = peer.outer.step(peer.anchor, values)
    return lost
