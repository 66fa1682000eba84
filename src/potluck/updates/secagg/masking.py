"""Masks and fixed point in the ring Z_{2^32}: everything a masked vector is made of.

A node's masked input is ``y = q + PRG(b) + Σ_j ±PRG(s_ij)  (mod 2^32)``:

* ``q``: its update clipped to [−c, c] and quantised to b-bit integers in [0, 2^b − 1]
  (:func:`quantise`); the sum of n of them stays below 2^32 when n·(2^b − 1) < 2^32,
  which :func:`check_no_wrap` enforces, so the ring sum *is* the integer sum;
* ``PRG(b)``: a self-mask expanded from a 32-byte seed;
* ``PRG(s_ij)``: a pairwise mask from the X25519 secret it agreed with neighbour j,
  added when i < j and subtracted when i > j, so each pair cancels in the sum.

The PRG is AES-256-CTR with an all-zero 16-byte initial counter block, encrypting
zeros; its keystream is read as little-endian uint32 words. A pairwise key is
HKDF-SHA256 (no salt, info ``b"potluck/secagg/v1/mask"``) of the raw X25519 secret; a
self-mask seed is used as the AES key directly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from potluck.core.errors import ConfigError

RING_BITS = 32
MASK_INFO = b"potluck/secagg/v1/mask"


class Keystream:
    """AES-256-CTR keystreams of ``count`` uint32 words, one key after another.

    A node adds 2⌈log2 n⌉ + 1 masks of the model's size per round: expanding each into
    one reused buffer (``update_into``) and adding it in place costs a third of making
    and freeing fresh arrays for every mask.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self._zeros = bytes(4 * count)
        self._buf = bytearray(4 * count + 15)  # update_into wants a block's room beyond the input
        self._words = np.frombuffer(self._buf, dtype="<u4", count=count)

    def expand(self, key: bytes) -> np.ndarray:
        """The keystream of ``key`` (32 bytes), as a view valid until the next call."""
        if len(key) != 32:
            raise ValueError(f"a PRG key is 32 bytes, got {len(key)}")
        encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        encryptor.update_into(self._zeros, self._buf)
        return self._words

    def add(self, out: np.ndarray, key: bytes, *, subtract: bool = False) -> None:
        """``out`` (uint32, ``count`` values) ± the keystream of ``key``, mod 2^32, in place."""
        (np.subtract if subtract else np.add)(out, self.expand(key), out=out)


def prg_words(key: bytes, count: int) -> np.ndarray:
    """``count`` uint32 words of the AES-256-CTR keystream of ``key`` (32 bytes)."""
    return Keystream(count).expand(key).astype(np.uint32)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret)


def agree_all(private: bytes, peers: Mapping[str, bytes], info: bytes) -> dict[str, bytes]:
    """:func:`agree` with every peer in ``{peer: public key}``. Loading a private key costs
    a scalar multiplication, as much as an agreement: it is loaded once for all peers."""
    key = X25519PrivateKey.from_private_bytes(private)
    return {peer: _hkdf(key.exchange(X25519PublicKey.from_public_bytes(public)), info) for peer, public in peers.items()}


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key from X25519(``private``, ``peer_public``) through HKDF-SHA256 with ``info``;
    both sides of a pair get the same key."""
    return agree_all(private, {"": peer_public}, info)[""]


def adds_pairwise(own_id: str, peer_id: str) -> bool:
    """Whether ``own_id`` adds (rather than subtracts) the mask it shares with ``peer_id``."""
    return own_id < peer_id


def pairwise_mask(own_private: bytes, peer_public: bytes, own_id: str, peer_id: str, count: int) -> np.ndarray:
    """The mask node ``own_id`` adds for neighbour ``peer_id``: +PRG when own_id < peer_id,
    −PRG (mod 2^32) otherwise, so the pair's two masks cancel."""
    out = np.zeros(count, np.uint32)
    Keystream(count).add(out, agree(own_private, peer_public, MASK_INFO), subtract=not adds_pairwise(own_id, peer_id))
    return out


def check_no_wrap(nodes: int, bits: int) -> None:
    """ConfigError unless the sum of ``nodes`` b-bit values fits the ring: n·(2^b − 1) < 2^32."""
    if not 1 <= bits <= 31:
        raise ConfigError(f"secagg_bits must be in [1, 31], got {bits}")
    if nodes * (2**bits - 1) >= 2**RING_BITS:
        most = (2**RING_BITS - 1) // (2**bits - 1)
        raise ConfigError(f"secure aggregation: the sum of {nodes} values of {bits} bits can wrap around 2^32; "
                          f"use secagg_bits ≤ {RING_BITS - nodes.bit_length()} or at most {most} nodes per round")


def quantise(values: np.ndarray, clip: float, bits: int, rng: np.random.Generator | None) -> np.ndarray:
    """``values`` clipped to [−clip, clip] and mapped to integers in [0, 2^bits − 1] (uint32).

    With ``rng``: stochastic rounding (unbiased: E[dequantise(q)] = the clipped value),
    one uniform draw per value; without: round half to even."""
    levels = 2**bits - 1
    x = np.clip(np.asarray(values, np.float64), -clip, clip)  # a fresh array: the steps below work in place
    x += clip
    x *= levels / (2 * clip)
    if rng is None:
        np.rint(x, out=x)
    else:  # ⌊x + u⌋ is ⌊x⌋ + 1 with probability frac(x)
        x += rng.random(x.shape)
        np.floor(x, out=x)
    np.clip(x, 0, levels, out=x)
    return x.astype(np.uint32)


def dequantise_sum(total: np.ndarray, count: int, clip: float, bits: int) -> np.ndarray:
    """The float64 sum of ``count`` dequantised values from the integer sum of their codes:
    Σ (qᵢ·2c/L − c) = total·2c/L − count·c, with L = 2^bits − 1."""
    levels = 2**bits - 1
    return np.asarray(total, np.float64) * (2 * clip / levels) - count * clip
