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
from collections.abc import Sequence
from dataclasses import dataclass

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
