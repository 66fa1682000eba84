"""A peer's hash-chained ledger of its outer steps, signed heads, and equivocation.

Each outer step appends one entry, as canonical JSON (``ledger.chain.canonical``)::

    {"v": 1, "step": S, "prev": HASH OF THE PREVIOUS ENTRY (64 zeros first),
     "group": [member ids, sorted], "contributions": [[peer, contribution root], ...],
     "root": Merkle root over the contributions, "model": anchor digest after the step}

and the entry's hash (SHA-256 of those bytes) is the peer's *head* at step S. The
contribution roots are the signed ones (``contributions.py``), so the entry names who
gave what; the Merkle root (``ledger/merkle.py``) lets a member prove its inclusion.

After a step every member signs a :class:`HeadClaim` ``(run, peer, step, head, root)``
and gives it to the other members of its group; members then pass on the claims they
received. An honest peer has one history, hence one head per step. Two valid claims
by the same peer for the same step with different heads are proof that it shows
different histories to different peers (:func:`find_equivocations`): the peer is
named, and the two signed claims are the evidence anyone can re-check. Members of one
group that agree on the group's outcome also claim the same ``root``; a member whose
root differs from the others' recorded another group or other contributions
(:func:`root_dissenters`).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from potluck.core.errors import LedgerError, SignatureError
from potluck.ledger.chain import canonical
from potluck.ledger.merkle import root as merkle_root
from potluck.ledger.signing import SigningKey, verify

GENESIS = "0" * 64
CLAIM_TAG = "potluck.peer.head.v1"


def contributions_root(contributions: Sequence[tuple[str, str]]) -> str:
    """Merkle root over ``[peer, root]`` leaves (canonical JSON), sorted by peer."""
    return merkle_root([canonical([p, r]) for p, r in sorted(contributions)]).hex()


@dataclass
class StepLedger:
    """The entries of one peer, oldest first; :meth:`append` keeps the chain."""

    entries: list[dict[str, Any]] = field(default_factory=list)

    @property
    def head(self) -> str:
        return entry_hash(self.entries[-1]) if self.entries else GENESIS

    def append(self, step: int, group: Sequence[str], contributions: Sequence[tuple[str, str]], model: str) -> dict[str, Any]:
        """Record one outer step; LedgerError if ``step`` does not follow the last one."""
        if self.entries and step <= self.entries[-1]["step"]:
            raise LedgerError(f"ledger entry for step {step} after step {self.entries[-1]['step']}")
        listed = sorted(contributions)
        entry = {"v": 1, "step": step, "prev": self.head, "group": sorted(group),
                 "contributions": [list(c) for c in listed], "root": contributions_root(listed), "model": model}
        self.entries.append(entry)
        return entry

    def head_at(self, step: int) -> str | None:
        """The head right after ``step`` (None if this peer has no entry for it)."""
        for entry in reversed(self.entries):
            if entry["step"] == step:
                return entry_hash(entry)
        return None

    def verify(self) -> None:
        """LedgerError naming the first entry whose link or root is wrong."""
        prev = GENESIS
        for i, entry in enumerate(self.entries):
            if entry.get("prev") != prev:
                raise LedgerError(f"ledger entry {i} (step {entry.get('step')}) does not link to the entry before it")
            listed = [(str(p), str(r)) for p, r in entry.get("contributions", [])]
            if entry.get("root") != contributions_root(listed):
                raise LedgerError(f"ledger entry {i} (step {entry.get('step')}): the Merkle root does not match its contributions")
            prev = entry_hash(entry)

    def lines(self) -> str:
        return "".join(canonical(e).decode() + "\n" for e in self.entries)

    @classmethod
    def from_lines(cls, text: str) -> StepLedger:
        try:
            ledger = cls([json.loads(line) for line in text.splitlines() if line.strip()])
        except ValueError as exc:
            raise LedgerError(f"a peer ledger line is not JSON: {exc}") from None
        ledger.verify()
        return ledger


def entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(entry)).hexdigest()


@dataclass(frozen=True)
class HeadClaim:
    """A peer's signed word on its head after ``step`` and the group root it recorded."""

    run: str
    peer: str
    step: int
    head: str
    root: str
    signature: str

    def statement(self) -> bytes:
        return json.dumps([CLAIM_TAG, self.run, self.peer, self.step, self.head, self.root],
                          separators=(",", ":")).encode()


def sign_head(key: SigningKey, run: str, peer: str, step: int, head: str, root: str) -> HeadClaim:
    unsigned = HeadClaim(run, peer, step, head, root, "")
    return HeadClaim(run, peer, step, head, root, key.sign(unsigned.statement()).hex())


def check_claim(claim: HeadClaim, public_key: bytes | None) -> None:
    """SignatureError naming the peer unless the claim is signed with its key."""
    try:
        signature = bytes.fromhex(claim.signature)
    except ValueError:
        signature = b""
    if public_key is None or not verify(public_key, signature, claim.statement()):
        raise SignatureError(f"head claim of {claim.peer!r} for step {claim.step} refused: not signed with its key")


@dataclass(frozen=True)
class Equivocation:
    """``peer`` signed two different heads for ``step``: both claims are the proof."""

    peer: str
    step: int
    claims: tuple[HeadClaim, HeadClaim]

    def __str__(self) -> str:
        a, b = self.claims
        return (f"{self.peer!r} equivocates: it signed head {a.head[:12]}… and head {b.head[:12]}… "
                f"for step {self.step}")


def find_equivocations(claims: Iterable[HeadClaim]) -> list[Equivocation]:
    """Every (peer, step) with two different signed heads, one proof each, sorted by peer.

    Pass only claims that passed :func:`check_claim`: an unchecked claim proves nothing.
    """
    first: dict[tuple[str, int], HeadClaim] = {}
    found: dict[tuple[str, int], Equivocation] = {}
    for claim in claims:
        key = (claim.peer, claim.step)
        seen = first.setdefault(key, claim)
        if seen.head != claim.head and key not in found:
            found[key] = Equivocation(claim.peer, claim.step, (seen, claim))
    return sorted(found.values(), key=lambda e: (e.peer, e.step))


def root_dissenters(claims: Iterable[HeadClaim]) -> list[str]:
    """Peers whose claimed group root differs from the most common one (ties: none named)."""
    roots = {c.peer: c.root for c in claims}
    counts = Counter(roots.values()).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return []
    return sorted(p for p, r in roots.items() if r != counts[0][0])
