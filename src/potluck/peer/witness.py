"""Comparing ledger heads within a group over the lane, so equivocation is named.

After an outer step every member of the group (as the all-reduce settled it) runs two
short rounds, both on the lane and bounded by one budget::

    head   {op, step, claim: [run, peer, step, head, root, sig]}   this peer's signed head
    heads  {op, step, claims: [[...], ...]}                         every claim it received

A peer with one history signs one head per step. One that shows different histories
to different members signs two; the second round puts both claims in front of every
honest member, which names the peer (``history.find_equivocations``) with the two
signed claims as evidence. Claims are checked with the key of the claimant's live
member record before they count; a ``head`` must come from its claimant. What is kept
is bounded: the last 8 steps, 256 claims each.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from potluck.core.errors import PeerRefused, PotluckError, SignatureError
from potluck.ledger.signing import SigningKey
from potluck.peer.exchange import Member
from potluck.peer.history import Equivocation, HeadClaim, check_claim, find_equivocations, sign_head
from potluck.peer.lane import Header, Lane

MAX_STEPS = 8
MAX_CLAIMS = 256


def claim_to_json(c: HeadClaim) -> list[Any]:
    return [c.run, c.peer, c.step, c.head, c.root, c.signature]


def claim_from_json(item: object) -> HeadClaim:
    if not isinstance(item, list) or len(item) != 6 or not isinstance(item[2], int):
        raise SignatureError(f"a malformed head claim {str(item)[:80]!r}")
    run, peer, step, head, root, sig = item
    return HeadClaim(str(run), str(peer), step, str(head), str(root), str(sig))


class HeadWitness:
    """One peer's side of the head comparison; ``handle`` serves the ``head``/``heads`` ops."""

    def __init__(self, me: str, run: str, key: SigningKey, key_of: Callable[[str], bytes | None]) -> None:
        self.me, self.run, self.key, self.key_of = me, run, key, key_of
        self.lane: Lane | None = None
        self._claims: dict[int, dict[tuple[str, str], HeadClaim]] = {}
        self._heard: dict[int, dict[str, set[str]]] = {}  # step -> op -> senders
        self._arrived = asyncio.Event()

    def claim(self, step: int, head: str, root: str, receiver: str) -> HeadClaim:
        """The signed head this peer gives ``receiver`` (the same for everyone: one history)."""
        return sign_head(self.key, self.run, self.me, step, head, root)

    def handle(self, sender: str, header: Header) -> tuple[Header, bytes]:
        op, step = header.get("op"), header.get("step")
        if not isinstance(step, int):
            raise PeerRefused(f"malformed {op} from {sender!r}: no step")
        items = [header.get("claim")] if op == "head" else header.get("claims")
        if not isinstance(items, list) or len(items) > MAX_CLAIMS:
            raise PeerRefused(f"malformed {op} from {sender!r}: claims must be a list of at most {MAX_CLAIMS}")
        claims = [claim_from_json(item) for item in items]
        if op == "head" and claims[0].peer != sender:
            raise SignatureError(f"{sender!r} passed off a head claim of {claims[0].peer!r} as its own")
        for claim in claims:
            self._keep(step, claim)
        self._heard.setdefault(step, {}).setdefault(str(op), set()).add(sender)
        self._arrived.set()
        return {"ok": True}, b""

    def _keep(self, step: int, claim: HeadClaim) -> None:
        if claim.step != step or claim.run != self.run:
            raise SignatureError(f"a head claim of {claim.peer!r} for run {claim.run!r} step {claim.step}, "
                                 f"not run {self.run!r} step {step}")
        check_claim(claim, self.key_of(claim.peer))
        kept = self._claims.setdefault(step, {})
        for store in (self._claims, self._heard):  # only the last MAX_STEPS steps
            while len(store) > MAX_STEPS:
                del store[min(store)]
        if len(kept) < MAX_CLAIMS:
            kept[(claim.peer, claim.head)] = claim

    async def compare(self, step: int, members: Sequence[Member], head: str, root: str,
                      budget: float) -> list[Equivocation]:
        """Both rounds with the other ``members`` within ``budget`` seconds; the
        equivocations found among the claims for ``step`` (this peer's included)."""
        others = [m for m in members if m.peer_id != self.me]
        own = self.claim(step, head, root, self.me)
        self._keep(step, own)
        until = time.monotonic() + budget
        await self._round(step, "head", others, lambda m: {"claim": claim_to_json(self.claim(step, head, root, m))},
                          time.monotonic() + budget / 2)
        passed = [claim_to_json(c) for c in self._claims.get(step, {}).values()]
        await self._round(step, "heads", others, lambda m: {"claims": passed}, until)
        return find_equivocations(self._claims.get(step, {}).values())

    async def _round(self, step: int, op: str, others: Sequence[Member], body: Callable[[str], dict[str, Any]],
                     until: float) -> None:
        sends = [asyncio.ensure_future(self._call(m, {"op": op, "step": step, **body(m.peer_id)}, until))
                 for m in others]
        heard = self._heard.setdefault(step, {}).setdefault(op, set())
        while any(m.peer_id not in heard for m in others) and time.monotonic() < until:
            self._arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), until - time.monotonic())
        await asyncio.gather(*sends, return_exceptions=True)

    async def _call(self, member: Member, header: Header, until: float) -> None:
        left = until - time.monotonic()
        if self.lane is None or left <= 0:
            return
        with contextlib.suppress(PotluckError):
            await self.lane.call(member.address, member.peer_id, member.fingerprint, header, timeout=left)
