"""Shamir secret sharing, t of n, over GF(p) with the Mersenne prime p = 2**521 − 1.

A secret s < p is the constant term of a random polynomial f of degree t − 1; share x
(an integer in [1, p)) is f(x). Any t shares give back s by Lagrange interpolation at
0; t − 1 shares are consistent with every secret, so they reveal nothing about it.
Secrets here are 32-byte values (a mask seed, an X25519 private key), far below p.

>>> shares = split(1234, 2, [1, 2, 3], randbelow=lambda p: 166)
>>> shares
{1: 1400, 2: 1566, 3: 1732}
>>> reconstruct({1: 1400, 3: 1732})
1234
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping

from potluck.core.errors import StrategyError

PRIME = 2**521 - 1
SHARE_BYTES = 66  # ⌈521 / 8⌉: one field element, big-endian


def split(secret: int, threshold: int, xs: Iterable[int], *, prime: int = PRIME,
          randbelow: Callable[[int], int] = secrets.randbelow) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` for each distinct nonzero ``x``; any
    ``threshold`` of them reconstruct it. ``randbelow(p)`` draws the coefficients
    (cryptographic by default; injectable for test vectors)."""
    points = list(xs)
    if not 0 <= secret < prime:
        raise StrategyError(f"shamir: secret must be in [0, p), got a {secret.bit_length()}-bit value")
    if not 1 <= threshold <= len(points):
        raise StrategyError(f"shamir: threshold {threshold} must be in [1, {len(points)} shares]")
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise StrategyError("shamir: share points must be distinct and in [1, p)")
    coefficients = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    out = {}
    for x in points:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % prime
        out[x] = y
    return out


def reconstruct(shares: Mapping[int, int], *, prime: int = PRIME) -> int:
    """f(0) of the polynomial through ``shares`` (Lagrange interpolation at 0).

    With at least t shares of one secret this is the secret; with fewer it is an
    unrelated field element (nothing signals the difference, so callers count shares)."""
    if not shares:
        raise StrategyError("shamir: no shares to reconstruct from")
    total = 0
    for xi, yi in shares.items():
        num, den = 1, 1
        for xj in shares:
            if xj != xi:
                num = num * -xj % prime
                den = den * (xi - xj) % prime
        total = (total + yi * num * pow(den, -1, prime)) % prime
    return total


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    if len(data) != SHARE_BYTES:
        raise StrategyError(f"shamir: a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise StrategyError("shamir: share value out of the field")
    return value
