"""RFC 6962 Merkle trees against the Certificate Transparency test vectors, and proofs that
refuse every kind of lie."""

from __future__ import annotations

import hashlib

import pytest

from potluck.ledger.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    inclusion_path,
    leaf_hash,
    node_hash,
    root,
    root_from_path,
    verify_inclusion,
)

# The leaves and roots of certificate-transparency's merkle_tree_test (RFC 6962 test data).
LEAVES = [bytes.fromhex(h) for h in
          ("", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f")]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",  # the empty tree: SHA-256 of nothing
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, PATH) from the same test data.
PATHS = [
    (0, 1, []),
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]


def reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 transcribed literally: split at the largest power of two below n."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + reference_root(leaves[:k]) + reference_root(leaves[k:])).digest()


def test_leaf_and_node_hashes_are_domain_separated():
    assert leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    left, right = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert leaf_hash(left + right) != node_hash(left, right)
    assert EMPTY_ROOT.hex() == ROOTS[0]


@pytest.mark.parametrize("n", range(9))
def test_roots_match_the_rfc_6962_vectors(n):
    assert root(LEAVES[:n]).hex() == ROOTS[n]


@pytest.mark.parametrize(("index", "size", "expected"), PATHS)
def test_inclusion_paths_match_the_rfc_6962_vectors(index, size, expected):
    path = inclusion_path(LEAVES[:size], index)
    assert [h.hex() for h in path] == expected
    assert verify_inclusion(LEAVES[index], index, size, path, bytes.fromhex(ROOTS[size]))


def test_every_proof_of_every_tree_up_to_33_leaves_verifies_and_no_lie_does():
    for n in range(1, 34):
        leaves = [f"leaf {i}".encode() for i in range(n)]
        tree = MerkleTree(leaves)
        assert tree.root == reference_root(leaves)  # the split rule for sizes that are not powers of two
        for i in range(n):
            path = tree.path(i)
            assert verify_inclusion(leaves[i], i, n, path, tree.root)
            assert not verify_inclusion(b"another leaf", i, n, path, tree.root)
            if n > 1:
                assert not verify_inclusion(leaves[i], (i + 1) % n, n, path, tree.root)
            if path:
                assert not verify_inclusion(leaves[i], i, n, path[:-1], tree.root)
                assert not verify_inclusion(leaves[i], i, n, [*path, EMPTY_ROOT], tree.root)
                flipped = bytearray(path[0])
                flipped[0] ^= 1
                assert not verify_inclusion(leaves[i], i, n, [bytes(flipped), *path[1:]], tree.root)


def test_malformed_proofs_are_false_never_an_exception():
    tree = MerkleTree(LEAVES)
    path = tree.path(5)
    assert root_from_path(LEAVES[5], 8, 8, path) is None  # index outside the tree
    assert root_from_path(LEAVES[5], -1, 8, path) is None
    assert not verify_inclusion(LEAVES[5], 5, 8, [b"short"], tree.root)
    assert not verify_inclusion(LEAVES[5], 5, 0, [], tree.root)
    with pytest.raises(IndexError, match="outside a tree of 8 leaves"):
        tree.path(8)
