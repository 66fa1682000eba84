"""Merkle trees as RFC 6962 (Certificate Transparency) defines them, with inclusion proofs.

The ledger commits to a round's contributions with one root over their canonical
bytes, so a node can check that its own update is in a round from the root and
``log2(n)`` hashes, without seeing anybody else's contribution::

    leaf hash  = SHA-256(0x00 || leaf bytes)
    node hash  = SHA-256(0x01 || left || right)
    MTH({})    = SHA-256()                       (the empty tree)
    MTH(D[n])  = node(MTH(D[0:k]), MTH(D[k:n]))  k: the largest power of two < n

The two prefixes keep a leaf from passing for an interior node (a second preimage).
:func:`inclusion_path` is RFC 6962's ``PATH(m, D[n])`` (§2.1.1) and
:func:`verify_inclusion` the verification algorithm of RFC 9162 §2.1.3.2. A proof
authenticates the leaf against a root; the tree size and the root themselves must come
from something signed (in potluck: the ledger entry's header).

>>> root([b"a", b"b"]).hex()[:16]
'b137985ff484fb60'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class MerkleTree:
    """A tree built once over its leaves' bytes; each proof then costs ``log2(n)`` lookups.

    Levels are paired left to right and an odd last node is carried up unchanged. That
    is the same tree as RFC 6962's recursive split (the left part of every split is a
    perfect tree), and a carried node simply has no sibling at that level, which is
    exactly where ``PATH`` skips one.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.size = len(leaves)
        level = [leaf_hash(leaf) for leaf in leaves]
        self.levels = [level]
        while len(level) > 1:
            paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                paired.append(level[-1])
            level = paired
            self.levels.append(level)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def path(self, index: int) -> list[bytes]:
        """``PATH(index, D[n])`` (RFC 6962 §2.1.1): sibling hashes from the leaf up.

        Raises ``IndexError`` when ``index`` is not a leaf of the tree.
        """
        if not 0 <= index < self.size:
            raise IndexError(f"leaf {index} is outside a tree of {self.size} leaves")
        out = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                out.append(level[sibling])
            index >>= 1
        return out


def root(leaves: Sequence[bytes]) -> bytes:
    """MTH of the leaves' bytes (not of their hashes)."""
    return MerkleTree(leaves).root


def inclusion_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(index, D[n])`` for one leaf; build a :class:`MerkleTree` for many."""
    return MerkleTree(leaves).path(index)


def root_from_path(leaf: bytes, index: int, size: int, path: Sequence[bytes]) -> bytes | None:
    """The root ``path`` leads to from ``leaf`` at ``index`` of ``size`` (RFC 9162
    §2.1.3.2), or ``None`` when the proof cannot belong to such a tree (wrong length,
    index out of range, a hash that is not 32 bytes)."""
    if not 0 <= index < size or any(len(h) != HASH_BYTES for h in path):
        return None
    fn, sn = index, size - 1
    current = leaf_hash(leaf)
    for sibling in path:
        if sn == 0:
            return None  # the proof is longer than the tree is deep
        if fn & 1 or fn == sn:
            current = node_hash(sibling, current)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            current = node_hash(current, sibling)
        fn >>= 1
        sn >>= 1
    return current if sn == 0 else None


def verify_inclusion(leaf: bytes, index: int, size: int, path: Sequence[bytes], expected_root: bytes) -> bool:
    """Whether ``leaf`` is leaf ``index`` of the ``size``-leaf tree with ``expected_root``.

    Never raises on malformed input: every byte of a proof comes from someone else.
    """
    found = root_from_path(leaf, index, size, path)
    return found is not None and found == expected_root
