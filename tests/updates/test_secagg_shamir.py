"""Shamir sharing over GF(2**521 − 1): a hand-computed vector, round trips, too few shares."""

from __future__ import annotations

import random

import pytest

from potluck.core.errors import StrategyError
from potluck.updates.secagg import shamir


def test_hand_computed_vector_in_a_small_field():
    # f(x) = 5 + 3x + 7x² over GF(17): f(1) = 15, f(2) = 39 mod 17 = 5, f(3) = 77 mod 17 = 9, f(4) = 129 mod 17 = 10
    coefficients = iter([3, 7])
    shares = shamir.split(5, 3, [1, 2, 3, 4], prime=17, randbelow=lambda p: next(coefficients))
    assert shares == {1: 15, 2: 5, 3: 9, 4: 10}
    assert shamir.reconstruct({1: 15, 2: 5, 3: 9}, prime=17) == 5
    assert shamir.reconstruct({2: 5, 3: 9, 4: 10}, prime=17) == 5


def test_any_t_shares_reconstruct_random_secrets():
    rng = random.Random(3)
    for _ in range(20):
        secret, n = rng.getrandbits(256), rng.randint(2, 12)
        t = rng.randint(1, n)
        shares = shamir.split(secret, t, range(1, n + 1))
        subset = dict(rng.sample(sorted(shares.items()), t))
        assert shamir.reconstruct(subset) == secret
        assert shamir.from_bytes(shamir.to_bytes(shares[1])) == shares[1]


def test_fewer_than_t_shares_give_an_unrelated_value():
    secret = random.Random(4).getrandbits(256)
    shares = shamir.split(secret, 4, range(1, 8))
    for subset in ([1, 2, 3], [2, 5, 7], [6]):
        assert shamir.reconstruct({x: shares[x] for x in subset}) != secret


def test_bad_inputs_are_refused():
    with pytest.raises(StrategyError, match="threshold"):
        shamir.split(1, 4, [1, 2, 3])
    with pytest.raises(StrategyError, match="distinct"):
        shamir.split(1, 2, [1, 1, 2])
    with pytest.raises(StrategyError, match="secret"):
        shamir.split(shamir.PRIME, 2, [1, 2])
    with pytest.raises(StrategyError, match="bytes"):
        shamir.from_bytes(b"\x01")
