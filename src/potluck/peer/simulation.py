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

**Untrusted peers** (issue 15, item 3), with the lane's code for each check: a group
averages by ``settings.averaging`` (``robust.py``: mean, median, trimmed mean over the
parts). Every member signs its contribution (``contributions.py``, keys from
:func:`~potluck.ledger.signing.derived_key`, simulation only) and every owner checks
each chunk against it; a member whose contribution is refused is named in
:attr:`SimStep.refused` and averages alone. Every peer keeps its ledger of outer steps
(``history.py``); after each step the members of a group exchange signed heads and pass
on what they received, so a peer that signs two heads for one step is named in
:attr:`SimStep.equivocators`. Adversaries, chosen by a seeded draw: ``poisoners`` send
their pseudo-gradient times ``poison_scale``; ``forgers`` sign with a key that is not
theirs; ``liars`` show a forked ledger head to half of their group.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from potluck.core.errors import ConfigError, SignatureError
from potluck.core.params import Params
from potluck.ledger.signing import derived_key, public_bytes
from potluck.peer.allreduce import butterfly, group_digest, part_bounds
from potluck.peer.contributions import Contribution, check_chunk, check_contribution, sign_contribution
from potluck.peer.diloco import NesterovOuter, mixed_vector, pseudo_gradient, split_mixed, unflatten
from potluck.peer.history import HeadClaim, StepLedger, check_claim, entry_hash, find_equivocations, sign_head
from potluck.peer.matchmaking import form_groups
from potluck.peer.robust import Averaging
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import Task

RUN = "simulation"


@dataclass(frozen=True)
class SimSettings:
    outer_steps: int = 5
    inner_epochs: int = 1
    group_size: int = 8
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    drop: float = 0.0
    seed: int = 0
    averaging: Averaging = Averaging()
    poisoners: int = 0
    poison_scale: float = -10.0
    forgers: int = 0
    liars: int = 0

    def __post_init__(self) -> None:
        if self.outer_steps < 1 or self.inner_epochs < 1:
            raise ConfigError("outer steps and inner epochs must be at least 1")
        if not 0.0 <= self.drop < 1.0:
            raise ConfigError(f"--drop must be in [0, 1), got {self.drop}")
        if min(self.poisoners, self.forgers, self.liars) < 0 or not np.isfinite(self.poison_scale):
            raise ConfigError("--poisoners, --forgers and --liars must be >= 0 and --poison-scale finite")

    def adversaries(self, names: Sequence[str]) -> dict[str, str]:
        """peer -> "poisoner" | "forger" | "liar", drawn with the seed (disjoint sets)."""
        wanted = ["poisoner"] * self.poisoners + ["forger"] * self.forgers + ["liar"] * self.liars
        if len(wanted) > len(names):
            raise ConfigError(f"{len(wanted)} adversaries among {len(names)} peers")
        order = np.random.default_rng([self.seed, 7]).permutation(len(names))
        return {names[int(i)]: role for i, role in zip(order, wanted)}


@dataclass
class _Peer:
    train: Dataset
    held_out: Dataset
    anchor: Params
    outer: NesterovOuter
    ledger: StepLedger = field(default_factory=StepLedger)


@dataclass(frozen=True)
class SimStep:
    """One outer step of the whole swarm.

    ``refused``: peer -> why its contribution was refused; ``equivocators``: peer -> the
    evidence (two signed heads for one step) that honest members found.
    """

    step: int
    mean_loss: float
    losses: dict[str, float]
    groups: list[tuple[str, ...]]
    dropped: list[str]
    lost_parts: int
    distinct_models: int
    refused: dict[str, str] = field(default_factory=dict)
    equivocators: dict[str, str] = field(default_factory=dict)


def simulate_peers(task: Task, data: Sequence[tuple[Dataset, Dataset]], initial: Params, settings: SimSettings,
                   on_step: Callable[[SimStep], None] | None = None) -> list[SimStep]:
    """Run ``settings.outer_steps`` steps of ``len(data)`` virtual peers (train, held-out) from ``initial``."""
    peers = {f"peer-{i:03d}": _Peer(train, held, initial, NesterovOuter(lr=settings.outer_lr,
                                                                        momentum=settings.outer_momentum))
             for i, (train, held) in enumerate(data)}
    roles = settings.adversaries(list(peers))
    steps = []
    for step in range(1, settings.outer_steps + 1):
        rng = np.random.default_rng([settings.seed, step])
        dropped = sorted(p for p in peers if rng.random() < settings.drop)
        lost, refused, equivocators = 0, {}, {}
        groups = form_groups(list(peers), settings.group_size, settings.seed, step)
        grads = {p: _train(task, peers[p], settings, p, step, roles.get(p)) for p in peers}
        for group in groups:
            accepted, refusals, signed = _check_contributions(group, peers, grads, settings, step, roles)
            refused.update(refusals)
            lost += _average(accepted, peers, grads, dropped, step, settings)
            for solo in refusals:  # a refused member averages alone
                _average((solo,), peers, grads, dropped, step, settings)
            committed = [p for p in group if p not in dropped]
            for p in committed:
                members = accepted if p in accepted else (p,)
                peers[p].ledger.append(step, members, [(m, signed[m].root) for m in members if m in signed],
                                       peers[p].anchor.digest)
            equivocators.update(_compare_heads([p for p in accepted if p in committed], peers, settings, step, roles))
        losses = {p: task.evaluate(peer.anchor, peer.held_out).loss for p, peer in peers.items()}
        record = SimStep(step, float(np.mean(list(losses.values()))), losses, groups, dropped, lost,
                         len({peer.anchor.digest for peer in peers.values()}), refused, equivocators)
        steps.append(record)
        if on_step is not None:
            on_step(record)
    return steps


def _train(task: Task, peer: _Peer, settings: SimSettings, name: str, step: int,
           role: str | None) -> tuple[np.ndarray, float]:
    seed = zlib.crc32(f"{settings.seed}:{name}:{step}".encode())
    out = task.fit(peer.anchor, peer.train, {"epochs": settings.inner_epochs}, seed)
    gradient = pseudo_gradient(peer.anchor, out.params)
    if role == "poisoner":
        gradient = (gradient * np.float32(settings.poison_scale)).astype(np.float32)
    return gradient, float(out.num_examples)


def _vectors(group: Sequence[str], peers: dict[str, _Peer], grads: dict[str, tuple[np.ndarray, float]]) -> tuple[bool, dict[str, np.ndarray]]:
    mixed = len({peers[p].anchor.digest for p in group}) > 1
    return mixed, {p: mixed_vector(peers[p].anchor, peers[p].outer.velocity, grads[p][0]) if mixed else grads[p][0]
                   for p in group}


def _check_contributions(group: tuple[str, ...], peers: dict[str, _Peer], grads: dict[str, tuple[np.ndarray, float]],
                         settings: SimSettings, step: int,
                         roles: dict[str, str]) -> tuple[tuple[str, ...], dict[str, str], dict[str, Contribution]]:
    """Every member signs its vector; each owner checks each chunk as the lane does.
    Returns the members whose contributions passed, why the others' did not, and the
    signed contributions."""
    if len(group) < 2:
        return group, {}, {}
    _, vectors = _vectors(group, peers, grads)
    digest, bounds = group_digest(step, group), part_bounds(next(iter(vectors.values())).shape[0], len(group))
    refused: dict[str, str] = {}
    signed: dict[str, Contribution] = {}
    for p in group:
        key = derived_key(settings.seed, "impostor" if roles.get(p) == "forger" else p)
        contribution, tree = sign_contribution(key, p, RUN, step, digest, grads[p][1], vectors[p], bounds)
        try:
            check_contribution(contribution, public_bytes(derived_key(settings.seed, p)), run=RUN, step=step, group=digest)
            for i, (start, stop) in enumerate(bounds):
                check_chunk(contribution, i, len(bounds), vectors[p][start:stop], tree.path(i))
        except SignatureError as exc:
            refused[p] = str(exc)
            continue
        signed[p] = contribution
    return tuple(p for p in group if p not in refused), refused, signed


def _average(group: tuple[str, ...], peers: dict[str, _Peer], grads: dict[str, tuple[np.ndarray, float]],
             dropped: Sequence[str], step: int, settings: SimSettings) -> int:
    """Average one group as the lane would; returns the parts lost to dropped members."""
    mixed, vectors = _vectors(group, peers, grads)
    draw = np.random.default_rng([settings.seed, step, 1])
    cut = {p: draw.random() for p in dropped}  # how far into the reduction each dropped member got

    def delivered(sender: str, receiver: str, phase: str) -> bool:
        for p, when in cut.items():
            if p in (sender, receiver) and (phase == "gather" or (sender == p and group.index(receiver) / len(group) >= when)):
                return False
        return True

    outcomes = (butterfly(vectors, {p: grads[p][1] for p in group}, delivered, settings.averaging.reducer)
                if len(group) > 1 else {})
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


def _compare_heads(members: Sequence[str], peers: dict[str, _Peer], settings: SimSettings, step: int,
                   roles: dict[str, str]) -> dict[str, str]:
    """Members give each other signed heads for ``step``, then pass on what they got;
    returns the peers that honest members caught signing two heads, with the evidence."""
    told: dict[str, list[HeadClaim]] = {p: [] for p in members}
    for sender in members:
        ledger, key = peers[sender].ledger, derived_key(settings.seed, sender)
        entry = ledger.entries[-1]
        for i, receiver in enumerate(r for r in members if r != sender):
            head = ledger.head
            if roles.get(sender) == "liar" and i % 2:
                head = entry_hash({**entry, "model": "a history shown to some members only"})
            told[receiver].append(sign_head(key, RUN, sender, step, head, entry["root"]))
    found: dict[str, str] = {}
    for me in (p for p in members if roles.get(p) != "liar"):
        known = list(told[me]) + [c for other in members if other != me for c in told[other]]  # passed on
        checked = []
        for claim in known:
            try:
                check_claim(claim, public_bytes(derived_key(settings.seed, claim.peer)))
            except SignatureError:
                continue
            checked.append(claim)
        found.update({e.peer: str(e) for e in find_equivocations(checked)})
    return found
