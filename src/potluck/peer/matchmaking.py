"""Who averages with whom at outer step s, found through the DHT, and how long to wait.

Each peer due to average step s publishes a ready record under ``ready/<s>`` and polls
that key and the member list. It stops waiting when every live member that is not
already past step s is ready, or when the matchmaking deadline passes; then it splits
the ready peers into groups with :func:`form_groups`, which every peer computes the same
way from the same set (sorted ids, shuffled by a generator seeded with the run seed
and s, dealt round-robin into ⌈n / max_size⌉ groups). Groups change every step, so
what one group learned reaches the others.

Deadlines adapt to measured speed (:class:`Deadlines`): stragglers are waited for as
long again as this peer's own inner phase took (plus a record's TTL, the time a dead
peer takes to leave the member list), and an all-reduce gets four times the slowest
recent all-reduce; both within a floor and a ceiling. Until something is measured, the
ceiling applies.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from potluck.core.errors import ConfigError
from potluck.peer.dht import PeerDHT, members_keys, ready_key, ready_keys
from potluck.peer.exchange import Member
from potluck.peer.records import PeerRecord, certificate_fingerprint


def form_groups(ready: Sequence[str], max_size: int, seed: int, step: int) -> list[tuple[str, ...]]:
    """Partition ``ready`` into groups of at most ``max_size``, sizes differing by at most one."""
    if max_size < 2:
        raise ConfigError(f"a group needs room for at least 2 peers, got group size {max_size}")
    order = sorted(set(ready))
    random.Random(f"potluck.peer.groups:{seed}:{step}").shuffle(order)
    count = max(1, math.ceil(len(order) / max_size))
    return [tuple(sorted(order[i::count])) for i in range(count) if order[i::count]]


class Deadlines:
    """Matchmaking and all-reduce deadlines (seconds) from measured durations."""

    def __init__(self, *, floor: float = 5.0, ceiling: float = 60.0, ttl: float = 6.0) -> None:
        if not 0 < floor <= ceiling:
            raise ConfigError(f"deadline floor {floor} must be > 0 and ≤ the ceiling {ceiling}")
        self.floor, self.ceiling, self.ttl = floor, ceiling, ttl
        self.inner: float | None = None
        self.allreduces: list[float] = []

    def observe_inner(self, seconds: float) -> None:
        self.inner = seconds if self.inner is None else 0.5 * self.inner + 0.5 * seconds

    def observe_allreduce(self, seconds: float) -> None:
        self.allreduces = [*self.allreduces[-4:], seconds]

    def matchmaking(self) -> float:
        if self.inner is None:
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.inner + self.ttl))

    def allreduce(self) -> float:
        if not self.allreduces:
            return self.ceiling
        return min(self.ceiling, max(self.floor, 4 * max(self.allreduces)))


@dataclass
class Directory:
    """The live member records last read, by peer id."""

    members: dict[str, PeerRecord]

    def fingerprint_of(self, peer_id: str) -> str | None:
        record = self.members.get(peer_id)
        return certificate_fingerprint(record) if record is not None else None

    def key_of(self, peer_id: str) -> bytes | None:
        """The Ed25519 key of the peer's live member record (None: not listed)."""
        record = self.members.get(peer_id)
        return record.public_key if record is not None else None

    def member(self, peer_id: str) -> Member:
        record = self.members[peer_id]
        return Member(peer_id, record.address, certificate_fingerprint(record))


async def refresh(dht: PeerDHT, run: str, directory: Directory) -> None:
    records = await dht.read(*members_keys(run))
    directory.members = {r.peer_id: r for r in records if r.kind == "member"}  # not those that left


async def rendezvous(dht: PeerDHT, run: str, directory: Directory, peers: int, deadline: float,
                     poll: float = 0.25) -> int:
    """Before the first outer step: wait until ``peers`` members are listed, or ``deadline``
    seconds; returns how many are. (Without it, the first peer up would train alone.)"""
    until = time.monotonic() + deadline
    while True:
        await refresh(dht, run, directory)
        if len(directory.members) >= peers or time.monotonic() >= until:
            return len(directory.members)
        await asyncio.sleep(poll)


async def find_group(dht: PeerDHT, run: str, me: str, step: int, *, ready_record: Callable[[], bytes],
                     directory: Directory, deadline: float, group_size: int, seed: int, ttl: float,
                     poll: float = 0.25) -> tuple[list[Member], dict[str, str]]:
    """This peer's group for ``step`` (see the module docstring) and each member's anchor
    digest, from its ready record; ``ready_record()`` signs a fresh ready record,
    re-published every ``ttl / 3`` seconds while waiting."""
    until, published = time.monotonic() + deadline, -math.inf
    while True:
        if time.monotonic() - published > ttl / 3:
            await dht.put(ready_key(run, step, me), ready_record())
            published = time.monotonic()
        await refresh(dht, run, directory)
        ready = {r.peer_id: r.anchor for r in await dht.read(*ready_keys(run, step))
                 if r.step == step and r.peer_id in directory.members}
        expected = {p for p, r in directory.members.items() if r.step <= step}
        if expected <= set(ready) or time.monotonic() >= until:
            break
        await asyncio.sleep(poll)
    if me not in ready:  # our own records are always in our own storage; only a clock jump gets here
        return ([directory.member(me)] if me in directory.members else []), {}
    mine = next(g for g in form_groups(sorted(ready), group_size, seed, step) if me in g)
    return [directory.member(p) for p in mine], {p: ready[p] for p in mine}
