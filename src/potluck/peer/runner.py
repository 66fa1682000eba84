"""One peer's loop: H inner epochs, matchmaking, the group all-reduce, the outer step, commit.

::

    anchor θ ← resume from the run directory, or task.build(seed)   (same seed: same θ₀)
    for s in resumed+1 … outer_steps:
        θᵢ ← task.fit(θ, own data, epochs = H)            inner optimizer: the Task's own
        g  ← θ − θᵢ                                        pseudo-gradient
        group ← find_group(s)                              DHT matchmaking, with a deadline
        ḡ  ← group all-reduce of g, weighted by examples   lane, with a deadline
        θ  ← Nesterov outer step(θ, ḡ)                     diloco.py
        evaluate θ on the held-out slice of own data
        ledger entry s (group, signed contribution roots, θ's digest); commit step s (rundir.py)
        compare ledger heads with the group (witness.py): equivocators are named

The peer keeps its member record (address, certificate, key, current step)
re-published every ``ttl / 3`` seconds from start to stop, so it is listed while it
lives and ages out ``ttl`` seconds after it dies.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import ConfigError, DataError, PeerRefused, PotluckError
from potluck.core.files import atomic_write
from potluck.core.messages import Scalar
from potluck.core.params import Params
from potluck.peer.allreduce import AllReduceOutcome, part_bounds
from potluck.peer.contributions import Signer
from potluck.peer.dht import PeerDHT, members_key
from potluck.peer.diloco import NesterovOuter, mixed_vector, pseudo_gradient, split_mixed, unflatten
from potluck.peer.exchange import Exchange, Member
from potluck.peer.history import Equivocation
from potluck.peer.identity import load_identity
from potluck.peer.joining import StateServer, fetch_state, vouched_state
from potluck.peer.lane import Lane
from potluck.peer.matchmaking import Deadlines, Directory, find_group, refresh, rendezvous
from potluck.peer.records import Trust, make_record
from potluck.peer.robust import Averaging
from potluck.peer.rundir import PeerRunDir
from potluck.peer.witness import HeadWitness
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PeerConfig:
    """What ``potluck peer`` runs; every field is a CLI option of the same name."""

    peer_id: str
    tls_dir: Path
    run_dir: Path
    run_id: str = "potluck"
    task: str = "digits"
    data_path: Path | None = None
    host: str = "127.0.0.1"
    advertise: str | None = None
    port: int = 0
    dht_port: int = 0
    bootstrap: tuple[tuple[str, int], ...] = ()
    outer_steps: int = 10
    inner_epochs: int = 1
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    group_size: int = 8
    quantize: bool = False
    averaging: str = "mean"
    trim: float = 0.25
    ttl: float = 6.0
    deadline_floor: float = 5.0
    deadline_ceiling: float = 60.0
    seed: int = 0
    wait_for_peers: int = 1
    rendezvous_timeout: float = 60.0
    fit: dict[str, Scalar] = field(default_factory=dict)
    port_file: Path | None = None
    join: bool = False

    def __post_init__(self) -> None:
        for name in ("outer_steps", "inner_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if (self.advertise or self.host) in ("0.0.0.0", "::", ""):
            raise ConfigError(f"--host {self.host} listens everywhere; pass --advertise with the address others dial")
        if self.wait_for_peers < 1:
            raise ConfigError(f"--wait-for-peers must be at least 1, got {self.wait_for_peers}")
        if self.group_size < 2:
            raise ConfigError(f"--group-size must be at least 2, got {self.group_size}")
        if not 1.0 <= self.ttl <= 60.0:
            raise ConfigError(f"--ttl must be in [1, 60] seconds, got {self.ttl}")
        for port in (self.port, self.dht_port, *(p for _, p in self.bootstrap)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"port {port} is not in 0-65535")
        Averaging(self.averaging, self.trim)  # checks both


@dataclass(frozen=True)
class StepRecord:
    """What one outer step did; one line of ``metrics.jsonl``."""

    step: int
    peer: str
    loss: float
    metrics: dict[str, float]
    train_loss: float
    group: tuple[str, ...]
    missing_parts: int
    inner_seconds: float
    matchmaking_seconds: float
    allreduce_seconds: float
    matchmaking_deadline: float
    allreduce_deadline: float
    model_digest: str
    ledger_head: str = ""
    refused: dict[str, str] = field(default_factory=dict)  # peer -> why its contribution was refused
    equivocators: dict[str, str] = field(default_factory=dict)  # peer -> the evidence
    joined_from: str = ""  # the peer this step's state was fetched from (joining.py)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; NaN (no training at step 0) becomes null, which JSON has."""
        out = {**self.__dict__, "group": list(self.group)}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def split_holdout(data: Dataset, seed: int, fraction: float = 0.2) -> tuple[Dataset, Dataset]:
    """A seeded train / held-out split of a peer's own data (the held-out part gives the loss)."""
    if len(data) < 2:
        raise DataError(f"{data.source}: a peer needs at least 2 examples, got {len(data)}")
    order = np.random.default_rng(seed).permutation(len(data))
    cut = max(1, int(len(data) * fraction))
    return data.subset(order[cut:]), data.subset(order[:cut])


async def run_peer(cfg: PeerConfig, on_step: Callable[[StepRecord], None] | None = None) -> list[StepRecord]:
    """Run one peer to ``cfg.outer_steps``; returns the records of the steps run here
    (step 0, the starting model's loss, when the run directory was fresh)."""
    peer = _Peer(cfg, on_step)
    records: list[StepRecord] = []
    try:
        await peer.start()
        if peer.start_step == 0:
            records.append(await (peer.join() if cfg.join else peer.evaluate_start()))
        for step in range(peer.start_step + 1, cfg.outer_steps + 1):
            records.append(await peer.outer_step(step))
    finally:
        await peer.stop()
    return records


class _Peer:
    """The state of one running peer: model, outer optimizer, DHT node, lane."""

    def __init__(self, cfg: PeerConfig, on_step: Callable[[StepRecord], None] | None = None) -> None:
        self.cfg, self.on_step = cfg, on_step
        self.rundir = PeerRunDir(cfg.run_dir, cfg.run_id, cfg.peer_id)
        self.rundir.create()
        self.identity = load_identity(cfg.tls_dir, cfg.peer_id, self.rundir.key_file)
        self.task: Task = resolve_task(cfg.task, options=cfg.fit)  # charlm takes its model's shape from -F
        self.train, self.held_out = split_holdout(self.task.load_data(cfg.data_path), cfg.seed)
        self.anchor = self.task.build(DataInfo.from_dataset(self.train), cfg.seed)
        self.outer = NesterovOuter(lr=cfg.outer_lr, momentum=cfg.outer_momentum)
        self.start_step = 0
        resumed = self.rundir.resume()
        if resumed is not None:
            self.start_step, self.anchor = resumed.step, resumed.anchor
            self.outer.load_state(resumed.outer_state)
        self.ledger = self.rundir.load_ledger(self.start_step)
        self.directory = Directory({})
        self.dht = PeerDHT(Trust(self.identity.tls.ca, cfg.run_id))
        signer = Signer(cfg.run_id, self.identity.signing_key, self.directory.key_of)
        self.exchange = Exchange(cfg.peer_id, self.directory.fingerprint_of, quantize=cfg.quantize, signer=signer,
                                 averaging=Averaging(cfg.averaging, cfg.trim))
        self.lane = Lane(self.identity, self.exchange.handle, max_payload=16 + 12 * self.anchor.num_values)  # a mixed [θ, v, g] part
        self.exchange.lane = self.lane
        self.witness = HeadWitness(cfg.peer_id, cfg.run_id, self.identity.signing_key, self.directory.key_of)
        self.witness.lane = self.lane
        self.exchange.more_ops.update({"head": self.witness.handle, "heads": self.witness.handle})
        self.state = StateServer()
        self.exchange.more_ops["state?"] = self.state.handle
        self.deadlines = Deadlines(floor=cfg.deadline_floor, ceiling=cfg.deadline_ceiling, ttl=cfg.ttl)
        self.step = self.start_step + 1
        self.address = (cfg.host, cfg.port)

    def _record(self, kind: str, weight: float = 0.0) -> bytes:
        return make_record(self.identity, kind, self.cfg.run_id, self.address, step=self.step, now=time.time(),
                           ttl=self.cfg.ttl, weight=weight, anchor=self.anchor.digest,
                           state="" if kind == "ready" else self.state.label)  # ready records stay small

    async def start(self) -> None:
        cfg = self.cfg
        self.address = (cfg.advertise or cfg.host, await self.lane.start(cfg.host, cfg.port))
        dht_port = await self.dht.start(cfg.host, cfg.dht_port, cfg.bootstrap)
        self.dht.keep_published(members_key(cfg.run_id, cfg.peer_id), lambda: self._record("member"), cfg.ttl / 3)
        if cfg.port_file is not None:
            atomic_write(cfg.port_file, f"{self.address[1]} {dht_port}\n".encode())
        await rendezvous(self.dht, cfg.run_id, self.directory, cfg.wait_for_peers, cfg.rendezvous_timeout)

    async def stop(self) -> None:
        """Leave: announce it (a leave record replaces the member record), then close."""
        try:
            await self.dht.leave(members_key(self.cfg.run_id, self.cfg.peer_id), self._record("leave"))
        except (PotluckError, OSError) as exc:
            log.warning("could not announce leaving: %s", exc)
        await self.dht.stop()
        await self.lane.stop()

    async def join(self) -> StepRecord:
        """Adopt the newest committed state two other peers vouch for (joining.py) and
        commit it as this peer's own; PeerRefused when none is given within the
        rendezvous timeout."""
        cfg = self.cfg
        until = time.monotonic() + cfg.rendezvous_timeout
        while True:
            await refresh(self.dht, cfg.run_id, self.directory)
            vouched = vouched_state(self.directory.members.values(), cfg.peer_id)
            if vouched is not None:
                servers = [self.directory.member(p) for p in vouched.vouchers]
                try:
                    fetched = await fetch_state(self.lane, servers, vouched, max(1.0, until - time.monotonic()))
                    break
                except PotluckError as exc:
                    log.warning("joining: %s", exc)
            if time.monotonic() >= until:
                raise PeerRefused(f"no model state vouched for by two peers arrived within {cfg.rendezvous_timeout:g} s "
                                  f"({len(self.directory.members)} members listed)")
            await asyncio.sleep(0.25)
        anchor = Params.decode(fetched.model)
        anchor.check_schema(self.anchor.schema, what=f"the model of step {vouched.step} from {fetched.server}")
        self.anchor, self.start_step, self.step = anchor, vouched.step, vouched.step + 1
        self.outer.load_state(dict(Params.decode(fetched.outer)) if fetched.outer else {})
        for seconds in fetched.allreduces:  # start from the swarm's measured speed, not the ceiling
            self.deadlines.observe_allreduce(seconds)
        evaluation = await asyncio.to_thread(self.task.evaluate, self.anchor, self.held_out)
        record = StepRecord(vouched.step, cfg.peer_id, evaluation.loss, dict(evaluation.metrics), float("nan"),
                            (cfg.peer_id,), 0, 0.0, 0.0, 0.0, 0.0, 0.0, self.anchor.digest,
                            joined_from=",".join(vouched.vouchers))
        self._commit(record)
        return record

    async def evaluate_start(self) -> StepRecord:
        evaluation = await asyncio.to_thread(self.task.evaluate, self.anchor, self.held_out)
        record = StepRecord(0, self.cfg.peer_id, evaluation.loss, dict(evaluation.metrics), float("nan"),
                            (self.cfg.peer_id,), 0, 0.0, 0.0, 0.0, 0.0, 0.0, self.anchor.digest)
        self._commit(record)
        return record

    async def _average(self, step: int, group: list[Member], mixed: bool, gradient: np.ndarray, weight: float,
                       deadline: float) -> tuple[np.ndarray, AllReduceOutcome, list[Member]]:
        """The group's mean pseudo-gradient, the all-reduce's outcome and the group as agreed
        (a fifth of the deadline settles it, exchange.agree). When the members' anchors
        differ, [θ, v, g] is averaged and this peer adopts θ̄ and v̄ (diloco.py)."""
        group = await self.exchange.agree(step, group, 0.2 * deadline)
        deadline *= 0.8
        vector = mixed_vector(self.anchor, self.outer.velocity, gradient) if mixed else gradient
        outcome = await self.exchange.allreduce(step, group, vector, weight, deadline=deadline, seed=self.cfg.seed,
                                                anchor="mixed" if mixed else self.anchor.digest)
        if not mixed:
            return outcome.values, outcome, group
        bounds = part_bounds(vector.shape[0], len(group))
        theta, velocity, mean = split_mixed(outcome.values, vector, [bounds[i] for i in outcome.missing_parts])
        self.anchor, self.outer.velocity = unflatten(theta, self.anchor), velocity
        return mean, outcome, group

    def _commit(self, record: StepRecord) -> None:
        written = self.rundir.commit(record.step, self.anchor, self.outer.state(), record.to_json())
        self.state.update(record.step, *written, self.deadlines.allreduces)
        log.info("peer %s step %d: loss %.4f, group %s", record.peer, record.step, record.loss, ",".join(record.group))
        if self.on_step is not None:
            self.on_step(record)

    async def outer_step(self, step: int) -> StepRecord:
        cfg, self.step = self.cfg, step
        await self.dht.put(members_key(cfg.run_id, cfg.peer_id), self._record("member"))
        started = time.monotonic()
        seed = zlib.crc32(f"{cfg.seed}:{cfg.peer_id}:{step}".encode())
        out = await asyncio.to_thread(self.task.fit, self.anchor, self.train, {**cfg.fit, "epochs": cfg.inner_epochs},
                                      seed)
        inner = time.monotonic() - started
        self.deadlines.observe_inner(inner)
        gradient = pseudo_gradient(self.anchor, out.params)
        weight = float(out.num_examples)
        matchmaking_deadline, allreduce_deadline = self.deadlines.matchmaking(), self.deadlines.allreduce()
        group, anchors = await find_group(self.dht, cfg.run_id, cfg.peer_id, step,
                                          ready_record=lambda: self._record("ready", weight),
                                          directory=self.directory, deadline=matchmaking_deadline,
                                          group_size=cfg.group_size, seed=cfg.seed, ttl=cfg.ttl)
        reduce_started = time.monotonic()
        values, outcome = gradient, AllReduceOutcome(gradient, ())
        if len(group) >= 2:
            values, outcome, group = await self._average(step, group, len(set(anchors.values())) > 1, gradient, weight,
                                                         allreduce_deadline)
            self.deadlines.observe_allreduce(time.monotonic() - reduce_started)
        reduce_seconds = time.monotonic() - reduce_started
        self.anchor = self.outer.step(self.anchor, values)
        evaluation = await asyncio.to_thread(self.task.evaluate, self.anchor, self.held_out)
        record = StepRecord(step, cfg.peer_id, evaluation.loss, dict(evaluation.metrics),
                            float(out.metrics.get("train_loss", float("nan"))),
                            tuple(m.peer_id for m in group) or (cfg.peer_id,), len(outcome.missing_parts),
                            round(inner, 3), round(reduce_started - started - inner, 3), round(reduce_seconds, 3),
                            round(matchmaking_deadline, 3), round(allreduce_deadline, 3), self.anchor.digest)
        entry = self.ledger.append(step, record.group, sorted(outcome.signed.items()), self.anchor.digest)
        self.rundir.save_ledger(self.ledger)
        found: list[Equivocation] = []
        if len(group) >= 2:  # bounded: a slow or dead member costs at most a fifth of the deadline
            found = await self.witness.compare(step, group, self.ledger.head, entry["root"], 0.2 * allreduce_deadline)
        record = replace(record, ledger_head=self.ledger.head, refused=dict(outcome.refused),
                         equivocators={e.peer: str(e) for e in found})
        self._commit(record)
        return record
