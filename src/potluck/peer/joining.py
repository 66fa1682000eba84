"""Joining a running swarm: the current model and outer state, vouched for by others.

Every member record carries the peer's last commit as ``state`` =
``"STEP:MODEL_SHA256:OUTER_SHA256"`` (the SHA-256 of the anchor's and of the outer
optimizer's safetensors bytes, as ``rundir.py`` writes them), signed with the record.
A new peer (``potluck peer --join``) reads the member list, picks the newest state that
at least two other peers vouch for (:func:`vouched_state`: the same string in two
signed records), asks one of those peers for it over the lane::

    state?   {op, step}   reply: {step, model: BYTES, outer: BYTES, allreduces: [SECONDS, ...]},
                    payload: model then outer

and accepts the bytes only if both hashes equal the vouched digests
(:func:`fetch_state`); a peer that serves anything else is named and the next voucher
is asked. One lying peer cannot make a newcomer adopt its model: it would need a second
certified peer to sign the same digests. The newcomer then commits that state as its
own step and joins the next step's group. It starts its all-reduce deadline from the
server's last measured all-reduce durations (``allreduces``; unsigned, but any value is
clamped to the deadline floor and ceiling), not from the ceiling: a newcomer that waited
the ceiling for a member lost mid-reduce would fall behind the others for many steps.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from potluck.core.errors import PeerRefused, PotluckError, SignatureError
from potluck.peer.exchange import Member
from potluck.peer.lane import Header, Lane
from potluck.peer.records import PeerRecord

log = logging.getLogger(__name__)


def state_label(step: int, model: bytes, outer: bytes) -> str:
    return f"{step}:{hashlib.sha256(model).hexdigest()}:{hashlib.sha256(outer).hexdigest()}"


@dataclass(frozen=True)
class Vouched:
    """A committed state and the peers whose signed member records name it."""

    step: int
    model: str
    outer: str
    vouchers: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.step}:{self.model}:{self.outer}"


def vouched_state(records: Iterable[PeerRecord], me: str, at_least: int = 2) -> Vouched | None:
    """The newest state named by ``at_least`` member records of peers other than ``me``
    (ties: more vouchers first); None if there is none."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for record in records:
        if record.kind == "member" and record.peer_id != me and record.state:
            by_label[record.state].append(record.peer_id)
    best: Vouched | None = None
    for label, peers in by_label.items():
        parts = label.split(":")
        if len(peers) < at_least or len(parts) != 3 or not parts[0].isdigit():
            continue
        candidate = Vouched(int(parts[0]), parts[1], parts[2], tuple(sorted(peers)))
        if best is None or (candidate.step, len(candidate.vouchers)) > (best.step, len(best.vouchers)):
            best = candidate
    return best


class StateServer:
    """Serves this peer's committed states to newcomers (the ``state?`` op): the last one,
    and the one before, so that a newcomer that read the member list just before this
    peer committed again still gets the state it chose (and a mismatch means a lie)."""

    def __init__(self) -> None:
        self.step, self.model, self.outer = -1, b"", b""
        self.allreduces: list[float] = []
        self._previous: tuple[int, bytes, bytes] = (-1, b"", b"")

    @property
    def label(self) -> str:
        return state_label(self.step, self.model, self.outer) if self.step >= 0 else ""

    def update(self, step: int, model: bytes, outer: bytes, allreduces: Sequence[float] = ()) -> None:
        self._previous = (self.step, self.model, self.outer)
        self.step, self.model, self.outer, self.allreduces = step, model, outer, list(allreduces)

    def handle(self, sender: str, header: Header) -> tuple[Header, bytes]:
        wanted = header.get("step", self.step)
        if self.step < 0:
            raise PeerRefused(f"{sender!r} asked for the state before this peer committed one")
        held = {self.step: (self.model, self.outer), self._previous[0]: self._previous[1:]}
        if wanted not in held or wanted < 0:
            raise PeerRefused(f"{sender!r} asked for the state of step {wanted}; this peer holds steps "
                              f"{', '.join(str(k) for k in sorted(held) if k >= 0)}")
        model, outer = held[wanted]
        return ({"ok": True, "step": wanted, "model": len(model), "outer": len(outer),
                 "allreduces": self.allreduces}, model + outer)


@dataclass(frozen=True)
class Fetched:
    """A state as a newcomer received and checked it."""

    model: bytes
    outer: bytes
    server: str
    allreduces: tuple[float, ...]


async def fetch_state(lane: Lane, servers: Sequence[Member], vouched: Vouched, timeout: float) -> Fetched:
    """The state ``vouched`` from the first of ``servers`` that gives exactly its bytes;
    PeerRefused naming each server that failed and why."""
    until, failures = time.monotonic() + timeout, []
    for server in servers:
        left = until - time.monotonic()
        if left <= 0:
            break
        try:
            reply, payload = await lane.call(server.address, server.peer_id, server.fingerprint,
                                             {"op": "state?", "step": vouched.step}, timeout=left)
            return _check(server.peer_id, reply, payload, vouched)
        except PotluckError as exc:
            log.warning("joining: %s", exc)
            failures.append(f"{server.peer_id}: {exc}")
    raise PeerRefused(f"no peer gave the state of step {vouched.step} vouched for by {', '.join(vouched.vouchers)}: "
                      + ("; ".join(failures) or f"none answered within {timeout:.1f} s"))


def _check(peer: str, reply: Header, payload: bytes, vouched: Vouched) -> Fetched:
    size = reply.get("model")
    if not isinstance(size, int) or not 0 <= size <= len(payload):
        raise PeerRefused(f"{peer!r} sent a malformed state reply")
    model, outer = payload[:size], payload[size:]
    if reply.get("step") != vouched.step or state_label(vouched.step, model, outer) != vouched.label:
        raise SignatureError(f"{peer!r} served a state that is not the one {', '.join(vouched.vouchers)} signed "
                             f"for step {vouched.step}")
    listed = reply.get("allreduces")
    durations = [float(x) for x in listed[-5:] if isinstance(x, (int, float)) and 0 < x < 3600] if isinstance(listed, list) else []
    return Fetched(model, outer, peer, tuple(durations))
