"""Signed contributions: what a group member commits to before its chunks are averaged.

A member's vector is split into the group's ``n`` parts (``allreduce.part_bounds``);
its *contribution root* is the Merkle root (``ledger/merkle.py``, RFC 6962) over the
parts' float32 bytes. The member signs, with its Ed25519 key (the one its member
record introduced), one statement per step, as compact JSON::

    ["potluck.peer.contribution.v1", run, step, group digest, weight, contribution root]

Each chunk then travels with that signed statement and its Merkle path, so the owner
of part ``i`` checks, before the chunk enters the reduce, that (1) the signature is the
sender's (:func:`check_contribution`) and (2) the chunk is part ``i`` of the root it
signed (:func:`check_chunk`). One signature covers all ``n`` chunks, and the roots of a
step are what the peer's ledger records (``history.py``): a member cannot later deny
what it sent, nor send one owner something other than what it signed. A refused chunk
raises :class:`~potluck.core.errors.SignatureError` naming the sender and why.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from potluck.core.errors import SignatureError
from potluck.ledger.merkle import MerkleTree, verify_inclusion
from potluck.ledger.signing import SigningKey, verify

TAG = "potluck.peer.contribution.v1"


@dataclass(frozen=True)
class Contribution:
    """One member's signed commitment to its vector for one group and step (hex fields)."""

    peer: str
    run: str
    step: int
    group: str
    weight: float
    root: str
    signature: str

    def statement(self) -> bytes:
        return statement(self.run, self.step, self.group, self.weight, self.root)


def statement(run: str, step: int, group: str, weight: float, root: str) -> bytes:
    """The bytes a member signs (see the module docstring)."""
    return json.dumps([TAG, run, step, group, float(weight), root], separators=(",", ":")).encode()


def part_bytes(chunk: np.ndarray) -> bytes:
    """A part's leaf bytes: its values as little-endian float32 (what the lane carries)."""
    return np.ascontiguousarray(chunk, dtype="<f4").tobytes()


def contribution_tree(vector: np.ndarray, bounds: Sequence[tuple[int, int]]) -> MerkleTree:
    """The Merkle tree over the parts of ``vector`` (its root is the contribution root)."""
    return MerkleTree([part_bytes(vector[start:stop]) for start, stop in bounds])


def sign_contribution(key: SigningKey, peer: str, run: str, step: int, group: str, weight: float,
                      vector: np.ndarray, bounds: Sequence[tuple[int, int]]) -> tuple[Contribution, MerkleTree]:
    """Sign ``vector`` for ``group`` at ``step``; returns the statement and the tree (for the paths)."""
    tree = contribution_tree(vector, bounds)
    root = tree.root.hex()
    signature = key.sign(statement(run, step, group, weight, root)).hex()
    return Contribution(peer, run, step, group, float(weight), root, signature), tree


def check_contribution(c: Contribution, public_key: bytes | None, *, run: str, step: int, group: str) -> None:
    """SignatureError naming ``c.peer`` unless ``c`` is its signature for this run, step and group."""
    if public_key is None:
        raise SignatureError(f"contribution from {c.peer!r} refused: no member record introduces its key")
    if (c.run, c.step, c.group) != (run, step, group):
        raise SignatureError(f"contribution from {c.peer!r} refused: signed for run {c.run!r} step {c.step} "
                             f"group {c.group}, not run {run!r} step {step} group {group}")
    try:
        signature = bytes.fromhex(c.signature)
    except ValueError:
        signature = b""
    if not verify(public_key, signature, c.statement()):
        raise SignatureError(f"contribution from {c.peer!r} refused: the signature does not verify with the key "
                             f"of its member record ({public_key.hex()[:16]}…)")


def check_chunk(c: Contribution, part: int, parts: int, chunk: np.ndarray, path: Sequence[bytes]) -> None:
    """SignatureError naming ``c.peer`` unless ``chunk`` is part ``part`` of the root it signed."""
    try:
        root = bytes.fromhex(c.root)
    except ValueError:
        root = b""
    if not verify_inclusion(part_bytes(chunk), part, parts, path, root):
        raise SignatureError(f"chunk of part {part} from {c.peer!r} refused: it is not the part its signed "
                             f"contribution {c.root[:16]}… commits to")


@dataclass(frozen=True)
class Signer:
    """Signs this peer's contributions and checks the others' on the lane (``exchange.py``).

    ``key_of(peer)`` is the Ed25519 key of the peer's live member record (None: unknown).
    """

    run: str
    key: SigningKey
    key_of: Callable[[str], bytes | None]

    def sign(self, me: str, step: int, group: str, weight: float, vector: np.ndarray,
             bounds: Sequence[tuple[int, int]], chunks: MutableMapping[int, tuple[dict[str, Any], bytes]]) -> Contribution:
        """Sign ``vector`` and put the signature and each part's Merkle path into its chunk header."""
        c, tree = sign_contribution(self.key, me, self.run, step, group, weight, vector, bounds)
        for part, (header, _) in chunks.items():
            header.update(root=c.root, sig=c.signature, path=[h.hex() for h in tree.path(part)])
        return c

    def check(self, sender: str, step: int, group: str, weight: float, header: dict[str, Any], part: int,
              parts: int, values: np.ndarray) -> Contribution:
        """The sender's contribution, once its signature and the chunk's path check."""
        root, sig, path = header.get("root"), header.get("sig"), header.get("path")
        if not isinstance(root, str) or not isinstance(sig, str) or not isinstance(path, list):
            raise SignatureError(f"chunk of part {part} from {sender!r} refused: it carries no signed contribution")
        c = Contribution(sender, self.run, step, group, weight, root, sig)
        check_contribution(c, self.key_of(sender), run=self.run, step=step, group=group)
        try:
            hashes = [bytes.fromhex(str(h)) for h in path]
        except ValueError:
            hashes = []
        check_chunk(c, part, parts, values, hashes)
        return c

    def check_listed(self, listed: object, step: int, group: str) -> dict[str, Contribution]:
        """Contributions an owner passes on (``[[peer, root, sig, weight], ...]``), each checked."""
        if not isinstance(listed, list):
            raise SignatureError("the signed contributions of a reduced part are not a list")
        out = {}
        for item in listed:
            try:
                peer, root, sig, weight = (str(item[0]), str(item[1]), str(item[2]), float(item[3]))
            except (TypeError, IndexError, ValueError):
                raise SignatureError(f"a malformed signed contribution {str(item)[:80]!r} in a reduced part") from None
            c = Contribution(peer, self.run, step, group, weight, root, sig)
            check_contribution(c, self.key_of(peer), run=self.run, step=step, group=group)
            out[peer] = c
        return out
