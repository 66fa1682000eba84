"""Mask expansion and fixed point: fixed vectors, checked against cryptography's primitives directly."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from potluck.core.errors import ConfigError
from potluck.updates.secagg.masking import (
    MASK_INFO,
    Keystream,
    agree,
    agree_all,
    check_no_wrap,
    dequantise_sum,
    pairwise_mask,
    prg_words,
    quantise,
)

KEY = bytes(range(32))
ALICE, BOB = bytes([1] * 32), bytes([2] * 32)


def _ecb_counter_words(key: bytes, count: int) -> np.ndarray:
    """An independent CTR: AES-ECB of the big-endian block counters 0, 1, 2, …"""
    blocks = b"".join(i.to_bytes(16, "big") for i in range(-(-count * 4 // 16)))
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = enc.update(blocks) + enc.finalize()
    return np.frombuffer(stream[: 4 * count], "<u4")


def test_prg_fixed_vector_and_independent_computation():
    words = prg_words(KEY, 1000)
    assert words[:4].tolist() == [3053490418, 3500099882, 1788539817, 2155294429]
    np.testing.assert_array_equal(words, _ecb_counter_words(KEY, 1000))
    assert words.dtype == np.uint32


def _public(private: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization as s
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)


def test_pairwise_masks_cancel_and_match_an_independent_derivation():
    a_to_b = pairwise_mask(ALICE, _public(BOB), "a", "b", 64)
    b_to_a = pairwise_mask(BOB, _public(ALICE), "b", "a", 64)
    assert not (a_to_b + b_to_a).any()
    secret = X25519PrivateKey.from_private_bytes(ALICE).exchange(X25519PrivateKey.from_private_bytes(BOB).public_key())
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MASK_INFO).derive(secret)
    assert agree(ALICE, _public(BOB), MASK_INFO) == key
    np.testing.assert_array_equal(a_to_b, _ecb_counter_words(key, 64))


def test_keystream_adds_and_subtracts_in_place_mod_2_32_and_reuses_its_buffer():
    base = np.array([0, 1, 2**32 - 1, 7, 2**31], np.uint32)
    stream, other = Keystream(base.size), bytes(range(1, 33))
    out = base.copy()
    stream.add(out, KEY)
    np.testing.assert_array_equal(out, (base.astype(np.uint64) + _ecb_counter_words(KEY, 5)) % 2**32)
    stream.add(out, other)  # the buffer now holds the second key's stream
    stream.add(out, KEY, subtract=True)
    stream.add(out, other, subtract=True)
    np.testing.assert_array_equal(out, base)
    with pytest.raises(ValueError, match="32 bytes"):
        stream.add(out, b"short")


def test_agree_all_loads_the_key_once_and_matches_one_agreement_per_peer():
    carol = bytes([3] * 32)
    keys = agree_all(ALICE, {"b": _public(BOB), "c": _public(carol)}, MASK_INFO)
    assert keys == {"b": agree(ALICE, _public(BOB), MASK_INFO), "c": agree(ALICE, _public(carol), MASK_INFO)}
    assert keys["b"] == agree(BOB, _public(ALICE), MASK_INFO)  # both ends of a pair agree
    assert agree_all(ALICE, {}, MASK_INFO) == {}


def test_quantise_deterministic_vector_and_range():
    q = quantise(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]), clip=1.0, bits=2, rng=None)
    assert q.tolist() == [0, 0, 2, 2, 3, 3]  # (x + 1)·1.5 rounded half to even, clipped to [0, 3]
    assert q.dtype == np.uint32


def test_stochastic_rounding_is_unbiased_and_sums_dequantise_exactly():
    x = np.full(200_000, 0.3)
    q = quantise(x, clip=1.0, bits=4, rng=np.random.default_rng(0))
    assert abs(dequantise_sum(q.astype(np.uint64).sum(), q.size, 1.0, 4) / q.size - 0.3) < 1e-3
    parts = [quantise(np.random.default_rng(i).normal(0, 0.3, 50), 1.0, 16, None) for i in range(5)]
    total = sum(parts)
    np.testing.assert_array_equal(dequantise_sum(total, 5, 1.0, 16),
                                  sum(p.astype(np.float64) for p in parts) * (2 / 65535) - 5.0)


def test_configs_that_could_wrap_are_refused():
    check_no_wrap(65537, 16)  # 65537 · 65535 = 2^32 − 1
    with pytest.raises(ConfigError, match="wrap"):
        check_no_wrap(65538, 16)
    with pytest.raises(ConfigError):
        check_no_wrap(2, 32)
