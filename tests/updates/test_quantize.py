"""Quantisation: codes against a numpy oracle, unbiased rounding, bit packing, wire checks."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from potluck.core.errors import ConfigError, ParamsError, SchemaMismatch
from potluck.core.params import Params, ParamsKind
from potluck.updates import quantize
from potluck.updates.pipeline import UpdatePipeline
from potluck.updates.quantize import CODES, RANGES, Quantize, pack, unpack


def delta(**arrays) -> Params:
    return Params.from_arrays(arrays, ParamsKind.DELTA)


def roundtrip(stage: Quantize, update: Params, seed: int = 0) -> tuple[Params, Params]:
    wire = stage.encode(update, {}, np.random.default_rng(seed))
    return wire, stage.decode(wire, update.schema)


def test_codes_match_a_hand_computed_stochastic_rounding():
    # bits=1: two levels, min 0 and max 1 (scale 1); 0.25 rounds up with probability 0.25.
    update = delta(w=np.array([0.0, 0.25, 1.0], np.float32))
    for seed in range(20):
        u = np.random.default_rng(seed).random(3)  # the stage's draws, in order
        wire, back = roundtrip(Quantize(1), update, seed)
        code = int(u[1] < 0.25)
        assert wire[CODES].tolist() == [0b0_0_1_00000 | code << 6]
        assert wire[RANGES].tolist() == [[0.0, 1.0]]
        assert back["w"].tolist() == [0.0, float(code), 1.0]


def test_asymmetric_range_and_exact_levels():
    # min −1, max 2, bits 2 → scale 1: every value is a level, so the round trip is exact.
    update = delta(a=np.array([[-1.0, 0.0], [1.0, 2.0]], np.float32), b=np.array([5.0, 5.0], np.float64))
    wire, back = roundtrip(Quantize(2), update)
    assert wire[RANGES].tolist() == [[-1.0, 1.0], [5.0, 0.0]]  # b is constant: scale 0
    assert unpack(wire[CODES], 6, 2).tolist() == [0, 1, 2, 3, 0, 0]
    np.testing.assert_array_equal(back["a"], update["a"])
    np.testing.assert_array_equal(back["b"], update["b"])
    assert back.schema == update.schema and back.kind is ParamsKind.DELTA


def test_stochastic_rounding_is_unbiased_over_seeds():
    x = np.random.default_rng(7).normal(size=40).astype(np.float32)
    update = delta(w=x)
    stage = Quantize(2)  # coarse: 4 levels, so a biased rounding would show
    seeds = 1500
    total = np.zeros(40)
    for seed in range(seeds):
        total += roundtrip(stage, update, seed)[1]["w"]
    scale = (x.max() - x.min()) / 3
    # Each decoded value is within one scale of x, so its std is at most scale/2.
    assert np.abs(total / seeds - x).max() < 5 * (scale / 2) / math.sqrt(seeds)


def test_same_seed_same_codes_other_seed_other_codes():
    update = delta(w=np.random.default_rng(1).normal(size=200).astype(np.float32))
    stage = Quantize(4)
    assert roundtrip(stage, update, 3)[0].digest == roundtrip(stage, update, 3)[0].digest
    assert roundtrip(stage, update, 3)[0].digest != roundtrip(stage, update, 4)[0].digest


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trips_and_matches_a_bit_string_oracle(bits):
    codes = np.random.default_rng(bits).integers(0, 2**bits, size=37, dtype=np.uint8)
    packed = pack(codes, bits)
    text = "".join(format(int(c), f"0{bits}b") for c in codes)
    text += "0" * (-len(text) % 8)
    assert packed.tolist() == [int(text[i:i + 8], 2) for i in range(0, len(text), 8)]
    assert packed.size == math.ceil(37 * bits / 8)
    np.testing.assert_array_equal(unpack(packed, 37, bits), codes)


@pytest.mark.parametrize("bits", range(1, 9))
def test_every_bit_width_decodes_within_one_level(bits):
    x = np.random.default_rng(bits).uniform(-3, 1, size=101).astype(np.float32)
    wire, back = roundtrip(Quantize(bits), delta(w=x))
    assert wire[CODES].size == math.ceil(101 * bits / 8)
    assert np.abs(back["w"] - x).max() <= (x.max() - x.min()) / (2**bits - 1) * (1 + 1e-6)


def test_empty_constant_and_integer_tensors():
    update = delta(empty=np.zeros((0, 3), np.float32), const=np.full(5, -2.5, np.float32),
                   count=np.array([7], np.int64), w=np.array([1.0, 3.0], np.float16))
    stage = Quantize(8)
    wire, back = roundtrip(stage, update)
    assert [n for n in wire] == ["count", CODES, RANGES]
    assert wire.schema == stage.wire_schema(update.schema)
    assert wire[RANGES].tolist() == [[0.0, 0.0], [-2.5, 0.0], [1.0, 2 / 255]]
    for name in update:
        np.testing.assert_array_equal(back[name], update[name])
        assert back[name].dtype == update[name].dtype


def test_encoded_size_shrinks_about_32_over_bits():
    update = delta(w=np.random.default_rng(0).normal(size=(250, 400)).astype(np.float32))
    plain = update.encoded_size
    for bits, want in [(8, 4), (4, 8), (1, 32)]:
        ratio = plain / roundtrip(Quantize(bits), update)[0].encoded_size
        assert want * 0.97 < ratio <= want, (bits, ratio)  # headers: ~200 bytes


def test_small_model_still_shrinks_almost_four_times():
    # The digits MLP: one codes array for the whole model keeps headers small.
    shapes = {"1.weight": (64, 64), "1.bias": (64,), "3.weight": (10, 64), "3.bias": (10,)}
    update = delta(**{n: np.ones(s, np.float32) for n, s in shapes.items()})
    assert update.encoded_size / roundtrip(Quantize(8), update)[0].encoded_size > 3.7


def test_nan_in_the_update_is_refused_on_the_node():
    with pytest.raises(ParamsError, match="cannot quantise 'w'"):
        Quantize().encode(delta(w=np.array([1.0, np.nan], np.float32)), {}, np.random.default_rng(0))


def good_wire() -> tuple[Params, tuple]:
    update = delta(w=np.array([-1.0, 0.5, 2.0], np.float32))
    return Quantize(3).encode(update, {}, np.random.default_rng(0)), update.schema


def with_arrays(wire: Params, **changes) -> Params:
    return Params.from_arrays({**dict(wire), **changes}, ParamsKind.DELTA)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({CODES: np.zeros(3, np.uint8)}, SchemaMismatch, "quantize:codes"),  # wrong size
        ({RANGES: np.zeros((2, 2))}, SchemaMismatch, "quantize:ranges"),
        ({RANGES: np.array([[0.0, np.nan]])}, ParamsError, "not a range"),
        ({RANGES: np.array([[np.inf, 1.0]])}, ParamsError, "not a range"),
        ({RANGES: np.array([[0.0, -1.0]])}, ParamsError, "not a range"),
        ({RANGES: np.array([[1e38, 1e38]])}, ParamsError, "not a range of float32"),
        ({CODES: np.array([0b111_111_11, 0b1_1_000000], np.uint8)}, ParamsError, "padding bits"),
        ({RANGES: np.array([[0.0, 0.0]])}, ParamsError, "non-zero codes with scale 0"),
        ({"extra": np.zeros(1, np.float32)}, SchemaMismatch, "unexpected arrays"),
    ],
)
def test_malformed_wire_updates_are_refused(change, error, message):
    wire, schema = good_wire()
    Quantize(3).decode(wire, schema)  # the unchanged one is fine
    with pytest.raises(error, match=message):
        Quantize(3).decode(with_arrays(wire, **change), schema)


def test_settings_travel_in_the_fit_config_and_bad_ones_are_config_errors():
    config = UpdatePipeline([Quantize(4)]).to_config()
    assert config == {"update.stages": "quantize", "update.quantize.bits": 4}
    pipeline, _ = UpdatePipeline.from_config(config)
    assert pipeline.stages[0].bits == 4
    for bad in ({"update.quantize.bits": 0}, {"update.quantize.bits": 9}, {"update.quantize.bits": True},
                {"update.quantize.bits": 2.0}, {"update.quantize.step": 1}):
        with pytest.raises(ConfigError):
            UpdatePipeline.from_config({"update.stages": "quantize", **bad})


def test_a_model_array_named_like_the_wire_arrays_is_a_config_error():
    schema = (("quantize:codes", (2,), "int64"), ("w", (2,), "float32"))
    with pytest.raises(ConfigError, match="named 'quantize:codes'"):
        Quantize().wire_schema(schema)


def test_module_examples():
    assert doctest.testmod(quantize).failed == 0
