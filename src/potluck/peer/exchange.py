"""The all-reduce of one group over the lane: ``allreduce.py``'s algorithm, with deadlines.

Two requests travel on the lane (``lane.py``), both pushed by their sender::

    reduce  {op, step, group, anchor, part, weight, enc, lo, scale}  payload: part ``part``
            of the sender's vector, float32 (enc "f32") or 8-bit codes (enc "q8": the
            values are lo + code·scale, stochastic rounding as in ``updates/quantize.py``)
    gather  {op, step, group, part, weight, contributors}   payload: the reduced part, float32
    parts?  {op, step, group, parts: [i, ...]}   reply: {parts: [[i, weight, contributors], ...]}
            and those reduced parts, float32, one after the other (a repair: see below)

With a :class:`~potluck.peer.contributions.Signer` every ``reduce`` also carries the
sender's signed contribution (``root``, ``sig``) and the chunk's Merkle ``path``
(``contributions.py``); the owner refuses a chunk its sender did not sign, names the
sender (:attr:`AllReduceOutcome.refused`), and passes the signed roots it accepted on
with the reduced part (``gather``'s ``signed``: ``[[peer, root, sig, weight], ...]``), so
every member learns who contributed what (:attr:`AllReduceOutcome.signed`, the step's
ledger entry). An :class:`~potluck.peer.robust.Averaging` other than the mean makes each
owner reduce by median or trimmed mean.

``group`` is :func:`~potluck.peer.allreduce.group_digest` of the step and the members;
``anchor`` the digest of the model the pseudo-gradient was taken from: chunks of another
group, from a non-member, from a certificate other than the member's published one, for
another anchor, or arriving after the deadline are refused with the reason.

A request may arrive before this peer has joined the group (it was still polling the
DHT): it is kept, bounded, in a pending session and checked when the peer joins.

Timeline of :meth:`Exchange.allreduce` with deadline D: chunks go out at once; the own
part is reduced when every member's chunk is in or at 0.4·D; the reduced part goes out;
every part is in, or 0.8·D passes. Then the repair: a member missing a part (its owner
died while sending it around) asks the other members for it until D; a part nobody has
is zero on every member (``allreduce.py``). Nothing waits past D.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from potluck.core.errors import PeerRefused, PotluckError, SignatureError
from potluck.peer.allreduce import AllReduceOutcome, PartReducer, ReducedPart, assemble, group_digest, part_bounds
from potluck.peer.contributions import Contribution, Signer
from potluck.peer.lane import Caller, Header, Lane
from potluck.peer.robust import Averaging
from potluck.updates.quantize import check_range, dequantize, stochastic_codes

log = logging.getLogger(__name__)

MAX_SESSIONS = 8


@dataclass(frozen=True)
class Member:
    """A group member as its signed member record names it."""

    peer_id: str
    address: tuple[str, int]
    fingerprint: str


@dataclass
class _Session:
    step: int
    digest: str
    members: tuple[str, ...] = ()
    bounds: list[tuple[int, int]] = field(default_factory=list)
    reducer: PartReducer | None = None
    anchor: str = ""
    closed_reduce: bool = False
    pending: list[tuple[str, Header, bytes]] = field(default_factory=list)
    parts: dict[int, ReducedPart] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    signed: dict[str, Contribution] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


class Exchange:
    """Runs group all-reduces for one peer and serves the other members' requests.

    ``fingerprint_of(peer_id)`` returns the certificate fingerprint of the peer's live
    member record (None: unknown); calls from anyone else are refused.
    """

    def __init__(self, me: str, fingerprint_of: Callable[[str], str | None], *, quantize: bool = False,
                 signer: Signer | None = None, averaging: Averaging = Averaging()) -> None:
        self.me, self.fingerprint_of, self.quantize = me, fingerprint_of, quantize
        self.signer, self.averaging = signer, averaging
        # more ops served on this lane: op -> handler(caller id, header) (witness.py's head and heads)
        self.more_ops: dict[str, Callable[[str, Header], tuple[Header, bytes]]] = {}
        self.lane: Lane | None = None
        self._sessions: dict[tuple[int, str], _Session] = {}
        self._views: dict[int, dict[str, tuple[str, ...]]] = {}
        self._view_arrived = asyncio.Event()
        self.refused: deque[str] = deque(maxlen=100)  # the latest refusals, for logs and tests

    def _session(self, step: int, digest: str) -> _Session:
        key = (step, digest)
        if key not in self._sessions:
            if len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[min(self._sessions)]
            self._sessions[key] = _Session(step, digest)
        return self._sessions[key]

    # -- serving --------------------------------------------------------------------

    async def handle(self, caller: Caller, header: Header, payload: bytes) -> tuple[Header, bytes]:
        if self.fingerprint_of(caller.peer_id) != caller.fingerprint:
            raise PeerRefused(f"{caller.peer_id!r} has no live member record with this certificate")
        op, step, digest = header.get("op"), header.get("step"), header.get("group")
        if op == "view" and isinstance(step, int) and isinstance(header.get("members"), list):
            return self._store_view(caller.peer_id, step, header["members"])
        if isinstance(op, str) and op in self.more_ops:
            return self.more_ops[op](caller.peer_id, header)
        if op not in ("reduce", "gather", "parts?") or not isinstance(step, int) or not isinstance(digest, str):
            raise PeerRefused(f"malformed request from {caller.peer_id!r}: op {op!r}")
        if op == "parts?":
            return self._serve_parts(step, digest, header.get("parts"))
        session = self._session(step, digest)
        if not session.members:
            if len(session.pending) >= 64:
                raise PeerRefused(f"too many early requests for step {step}")
            session.pending.append((caller.peer_id, header, payload))
            return {"ok": True}, b""
        try:
            self._accept(session, caller.peer_id, header, payload)
        except (TypeError, ValueError, KeyError) as exc:  # a header field of the wrong type
            raise PeerRefused(f"malformed {op} from {caller.peer_id!r}: {exc}") from None
        except SignatureError as exc:
            session.refused.setdefault(caller.peer_id, str(exc))
            raise
        return {"ok": True}, b""

    def _store_view(self, sender: str, step: int, members: list[object]) -> tuple[Header, bytes]:
        views = self._views.setdefault(step, {})
        while len(self._views) > MAX_SESSIONS:
            del self._views[min(self._views)]
        if len(views) < 256:
            views[sender] = tuple(sorted(str(m) for m in members))
            self._view_arrived.set()
        return {"ok": True}, b""

    async def agree(self, step: int, members: Sequence[Member], budget: float) -> list[Member]:
        """Settle the group before averaging: send this peer's view (the member ids) to
        every member of it, and keep the members whose view arrived within ``budget``
        seconds and equals this one. Members with identical views so form the same
        group; one that saw another set averages with those that saw the same, or alone."""
        mine = tuple(sorted(m.peer_id for m in members))
        if len(mine) < 2:
            return list(members)
        until = time.monotonic() + budget
        header: Header = {"op": "view", "step": step, "members": list(mine)}
        sends = [asyncio.ensure_future(self._call(m, header, b"", until)) for m in members if m.peer_id != self.me]
        views = self._views.setdefault(step, {})
        while any(p not in views for p in mine if p != self.me) and time.monotonic() < until:
            self._view_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._view_arrived.wait(), until - time.monotonic())
        await asyncio.gather(*sends, return_exceptions=True)
        return [m for m in members if m.peer_id == self.me or views.get(m.peer_id) == mine]

    def _serve_parts(self, step: int, digest: str, wanted: object) -> tuple[Header, bytes]:
        session = self._sessions.get((step, digest))
        if not isinstance(wanted, list) or session is None:
            return {"ok": True, "parts": []}, b""
        have = [session.parts[i] for i in wanted if isinstance(i, int) and i in session.parts]
        listed = [[p.part, p.weight, list(p.contributors)] for p in have]
        return {"ok": True, "parts": listed}, b"".join(p.values.astype(np.float32).tobytes() for p in have)

    def _accept(self, session: _Session, sender: str, header: Header, payload: bytes) -> None:
        if sender not in session.members:
            raise PeerRefused(f"{sender!r} is not a member of group {session.digest} (step {session.step})")
        part = header.get("part")
        if not isinstance(part, int) or not 0 <= part < len(session.members):
            raise PeerRefused(f"{sender!r} sent part {part!r} of a group of {len(session.members)}")
        start, stop = session.bounds[part]
        values = _decode(header, payload, stop - start)
        weight = float(header.get("weight", 0))
        if header["op"] == "reduce":
            if session.closed_reduce or session.reducer is None or part != session.reducer.part:
                raise PeerRefused(f"chunk of part {part} from {sender!r} is late or not for {self.me!r}")
            if header.get("anchor") != session.anchor:
                raise PeerRefused(f"{sender!r} trained from model {str(header.get('anchor'))[:12]}…, "
                                     f"this group's anchor is {session.anchor[:12]}…")
            if self.signer is not None:
                session.signed[sender] = self.signer.check(sender, session.step, session.digest, weight, header,
                                                           part, len(session.members), values)
            session.reducer.add(sender, values, weight)
        else:
            if sender != session.members[part]:
                raise PeerRefused(f"{sender!r} does not own part {part}")
            if not np.isfinite(values).all() or not weight > 0:
                raise PeerRefused(f"reduced part {part} from {sender!r} holds NaN/Inf or a weight ≤ 0")
            if self.signer is not None:
                session.signed.update(self.signer.check_listed(header.get("signed", []), session.step, session.digest))
            contributors = tuple(str(c) for c in header.get("contributors", ()))
            values.setflags(write=False)
            session.parts[part] = ReducedPart(part, values, weight, contributors)
        session.changed.set()

    # -- running ----------------------------------------------------------------------

    async def allreduce(self, step: int, members: Sequence[Member], vector: np.ndarray, weight: float, *,
                        anchor: str, deadline: float, seed: int = 0) -> AllReduceOutcome:
        """This peer's part of the group's all-reduce; returns by ``deadline`` seconds from now."""
        names = tuple(sorted(m.peer_id for m in members))
        by_id = {m.peer_id: m for m in members}
        if len(names) == 1:
            return AllReduceOutcome(np.array(vector, copy=True), (), {0: names})
        started, me = time.monotonic(), names.index(self.me)
        session = self._join(step, names, vector.shape[0], anchor)
        session.reducer.add(self.me, vector[slice(*session.bounds[me])], weight)  # type: ignore[union-attr]
        chunks = self._chunks(session, vector, weight, anchor, np.random.default_rng([seed, step, me]))
        sends = [asyncio.ensure_future(self._call(by_id[names[i]], header, payload, started + 0.4 * deadline))
                 for i, (header, payload) in chunks.items()]
        # (chunks are sent until 0.4·D; the gathers until 0.8·D; the repair until D)
        await self._wait(session, lambda: session.reducer.complete, started + 0.4 * deadline)  # type: ignore[union-attr]
        session.closed_reduce = True
        reduced = session.reducer.result(vector.dtype)  # type: ignore[union-attr]
        session.parts[me] = reduced
        sends += [asyncio.ensure_future(self._gather(by_id[other], step, session, reduced, started + 0.8 * deadline))
                  for other in names if other != self.me]
        await self._wait(session, lambda: len(session.parts) == len(names), started + 0.8 * deadline)
        if len(session.parts) < len(names):
            await self._repair(session, [by_id[n] for n in names], started + deadline)
        # Our own sends may still be on their way even when every part is in: let them
        # finish (each is bounded by its deadline) before anything is cancelled.
        await asyncio.wait(sends, timeout=max(0.0, started + deadline - time.monotonic()))
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)
        outcome = assemble(vector, session.bounds, session.parts)
        return replace(outcome, signed={p: c.root for p, c in session.signed.items()}, refused=dict(session.refused))

    def _join(self, step: int, names: tuple[str, ...], size: int, anchor: str) -> _Session:
        session = self._session(step, group_digest(step, names))
        session.members, session.bounds, session.anchor = names, part_bounds(size, len(names)), anchor
        me = names.index(self.me)
        session.reducer = self.averaging.reducer(me, session.bounds[me][1] - session.bounds[me][0], names)
        for sender, header, payload in session.pending:
            try:
                self._accept(session, sender, header, payload)
            except SignatureError as exc:  # an early chunk its sender did not sign: named like a late one
                session.refused.setdefault(sender, str(exc))
                self.refused.append(str(exc))
            except (PotluckError, TypeError, ValueError, KeyError) as exc:
                self.refused.append(str(exc))
        session.pending.clear()
        return session

    async def _wait(self, session: _Session, done: Callable[[], bool], until: float) -> None:
        while not done():
            left = until - time.monotonic()
            if left <= 0:
                return
            session.changed.clear()
            try:
                await asyncio.wait_for(session.changed.wait(), left)
            except asyncio.TimeoutError:
                return

    async def _repair(self, session: _Session, members: list[Member], until: float) -> None:
        """Ask every other member that owns none of the missing parts for them; keep what comes."""
        missing = [i for i in range(len(members)) if i not in session.parts]
        askable = [m for i, m in enumerate(members) if i not in missing and m.peer_id != self.me]
        header: Header = {"op": "parts?", "step": session.step, "group": session.digest, "parts": missing}
        replies = await asyncio.gather(*[self._ask(m, header, until) for m in askable])
        for reply, payload in replies:
            try:
                self._take_parts(session, reply.get("parts", []), payload)
            except (TypeError, ValueError, IndexError) as exc:
                self.refused.append(f"a malformed parts reply: {exc}")

    @staticmethod
    def _take_parts(session: _Session, listed: list[Any], payload: bytes) -> None:
        offset = 0
        for part, weight, contributors in listed:
            start, stop = session.bounds[int(part)]
            size = 4 * (stop - start)
            values = np.frombuffer(payload[offset:offset + size], np.float32).copy()
            offset += size
            if part not in session.parts and values.shape == (stop - start,) and np.isfinite(values).all():
                values.setflags(write=False)
                session.parts[int(part)] = ReducedPart(int(part), values, float(weight), tuple(map(str, contributors)))

    async def _ask(self, member: Member, header: Header, until: float) -> tuple[Header, bytes]:
        left = until - time.monotonic()
        if left <= 0 or self.lane is None:
            return {}, b""
        try:
            return await self.lane.call(member.address, member.peer_id, member.fingerprint, header, timeout=left)
        except PotluckError as exc:
            log.warning("step %s: asking %s for parts failed: %s", header["step"], member.peer_id, exc)
            return {}, b""

    def _chunks(self, session: _Session, vector: np.ndarray, weight: float, anchor: str,
                rng: np.random.Generator) -> dict[int, tuple[Header, bytes]]:
        """The ``reduce`` requests for the other members' parts; signed over the values
        as the owners will decode them (8-bit codes decode to other values than sent)."""
        received, chunks = np.array(vector, np.float32), {}
        for part, owner in enumerate(session.members):
            if owner == self.me:
                continue
            start, stop = session.bounds[part]
            header: Header = {"op": "reduce", "step": session.step, "group": session.digest, "part": part,
                              "weight": weight, "anchor": anchor}
            if self.quantize:
                payload = _encode(vector[start:stop], header, rng)
                received[start:stop] = _decode(header, payload, stop - start)
            else:
                payload = received[start:stop].tobytes()
            chunks[part] = (header, payload)
        if self.signer is not None:
            session.signed[self.me] = self.signer.sign(self.me, session.step, session.digest, weight, received,
                                                       session.bounds, chunks)
        return chunks

    async def _gather(self, other: Member, step: int, session: _Session, reduced: ReducedPart, until: float) -> None:
        header: Header = {"op": "gather", "step": step, "group": session.digest, "part": reduced.part,
                          "weight": reduced.weight, "contributors": list(reduced.contributors),
                          "signed": [[c.peer, c.root, c.signature, c.weight] for p, c in session.signed.items()
                                     if p in reduced.contributors]}
        await self._call(other, header, reduced.values.astype(np.float32).tobytes(), until)

    async def _call(self, member: Member, header: Header, payload: bytes, until: float) -> None:
        assert self.lane is not None, "Exchange.lane is set before the first all-reduce"
        left = until - time.monotonic()
        if left <= 0:
            return
        try:
            await self.lane.call(member.address, member.peer_id, member.fingerprint, header, payload, timeout=left)
        except PotluckError as exc:
            log.warning("step %s: %s to %s failed: %s", header["step"], header["op"], member.peer_id, exc)


def _encode(chunk: np.ndarray, header: Header, rng: np.random.Generator) -> bytes:
    codes, lo, scale = stochastic_codes(chunk, 8, rng)
    header.update(enc="q8", lo=lo, scale=scale)
    return codes.tobytes()


def _decode(header: Header, payload: bytes, length: int) -> np.ndarray:
    enc = header.get("enc", "f32")
    if enc == "q8":
        lo, scale = header.get("lo"), header.get("scale")
        if not isinstance(lo, float) or not isinstance(scale, float) or len(payload) != length:
            raise PeerRefused(f"a q8 chunk of {len(payload)} bytes for a part of {length} values")
        check_range(lo, scale, 8, np.dtype(np.float32), "chunk")
        return dequantize(np.frombuffer(payload, np.uint8), lo, scale).astype(np.float32)
    if enc != "f32" or len(payload) != 4 * length:
        raise PeerRefused(f"a {enc!r} chunk of {len(payload)} bytes for a part of {length} values")
    values: np.ndarray = np.frombuffer(payload, np.float32).copy()
    return values
