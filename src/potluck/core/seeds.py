"""Derived seeds: every random draw in a run comes from (run seed, purpose, round, node).

Deriving rather than drawing from one stream makes a resumed run identical to an
uninterrupted one: round 7 uses the same randomness whether or not rounds 1–6 ran in
this process.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed determined by ``seed`` and ``parts`` (strings, ints)."""
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *parts))
