"""Top-k sparsification: exact selection, error feedback that loses nothing, wire checks."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from potluck.core.errors import ConfigError, ParamsError, SchemaMismatch
from potluck.core.params import Params, ParamsKind
from potluck.updates import topk
from potluck.updates.pipeline import UpdatePipeline
from potluck.updates.topk import CODES, INDICES, RANGE, VALUES, TopK, index_dtype, keep_count

DIGITS = {"1.weight": (64, 64), "1.bias": (64,), "3.weight": (10, 64), "3.bias": (10,)}  # the default task's MLP


def delta(**arrays) -> Params:
    return Params.from_arrays(arrays, ParamsKind.DELTA)


def random_update(seed: int, shapes=None) -> Params:
    rng = np.random.default_rng(seed)
    return delta(**{n: rng.normal(size=s).astype(np.float32) for n, s in (shapes or {"a": (6, 5), "b": (7,)}).items()})


def flat(params: Params) -> np.ndarray:
    return np.concatenate([params[n].ravel() for n in params if params[n].dtype.kind == "f"])


@pytest.mark.parametrize(("ratio", "n", "k"), [(0.01, 4810, 49), (0.07, 100, 7), (0.5, 3, 2), (1e-9, 10, 1),
                                                (1.0, 10, 10), (0.3, 0, 0)])
def test_keep_count_is_the_ceiling_of_ratio_times_size(ratio, n, k):
    assert keep_count(ratio, n) == k


@pytest.mark.parametrize(("n", "dtype"), [(1, "uint8"), (256, "uint8"), (257, "uint16"), (65536, "uint16"),
                                          (65537, "uint32"), (2**32 + 1, "uint64")])
def test_indices_use_the_smallest_sufficient_unsigned_dtype(n, dtype):
    assert index_dtype(n) == dtype


def test_picks_exactly_the_k_largest_magnitudes_across_tensors():
    update = random_update(1)
    stage = TopK(ratio=0.2)  # 37 values → k = 8
    state: dict = {}
    wire = stage.encode(update, state, np.random.default_rng(0))
    values = flat(update)
    want = np.sort(np.argsort(-np.abs(values))[:8])
    assert wire[INDICES].tolist() == want.tolist() and wire[INDICES].dtype == np.uint8
    np.testing.assert_array_equal(wire[VALUES], values[want])
    back = stage.decode(wire, update.schema)
    dense = np.zeros(37, np.float32)
    dense[want] = values[want]
    np.testing.assert_array_equal(flat(back), dense)
    assert back.schema == update.schema and back.kind is ParamsKind.DELTA
    residual = values.copy()
    residual[want] = 0
    np.testing.assert_array_equal(state["residual"], residual)  # exactly what was not sent


def test_a_hand_computed_round_with_feedback():
    stage = TopK(ratio=0.5)  # 4 values → 2 per round
    state: dict = {}
    first = stage.encode(delta(w=np.array([0.1, -3.0, 2.0, 0.5], np.float32)), state, None)
    assert first[INDICES].tolist() == [1, 2] and first[VALUES].tolist() == [-3.0, 2.0]
    # Round 2: the residual [0.1, 0, 0, 0.5] is added first: [0.4, 0.1, -0.2, 1.0].
    second = stage.encode(delta(w=np.array([0.3, 0.1, -0.2, 0.5], np.float32)), state, None)
    assert second[INDICES].tolist() == [0, 3]
    np.testing.assert_allclose(second[VALUES], [0.4, 1.0])
    np.testing.assert_allclose(state["residual"], [0, 0.1, -0.2, 0])


@pytest.mark.parametrize("bits", [None, 8, 2])
def test_error_feedback_loses_nothing_over_rounds(bits):
    stage = TopK(ratio=0.1, bits=bits)
    schema = random_update(0).schema
    state: dict = {}
    raw_sum = np.zeros(37, np.float64)
    sent_sum = np.zeros(37, np.float64)
    for rnd in range(12):
        update = random_update(rnd)
        raw_sum += flat(update)
        wire = stage.encode(update, state, np.random.default_rng(rnd))
        sent_sum += flat(stage.decode(wire, schema))
    np.testing.assert_allclose(sent_sum + state["residual"], raw_sum, atol=1e-5)


def test_quantised_values_are_unbiased_and_their_error_is_fed_back():
    update = random_update(3)
    stage = TopK(ratio=0.25, bits=2)
    state: dict = {}
    wire = stage.encode(update, state, np.random.default_rng(0))
    assert [n for n in wire] == [INDICES, CODES, RANGE] and wire.schema == stage.wire_schema(update.schema)
    sent = flat(stage.decode(wire, update.schema))
    np.testing.assert_allclose(sent + state["residual"], flat(update), atol=1e-6)
    mean = np.mean([flat(stage.decode(stage.encode(update, {}, np.random.default_rng(s)), update.schema))
                    for s in range(1500)], axis=0)
    picked = wire[INDICES]
    spread = np.ptp(flat(update)[picked]) / 3
    assert np.abs(mean[picked] - flat(update)[picked]).max() < 5 * (spread / 2) / np.sqrt(1500)


def test_residual_is_reset_for_another_model_and_kept_after_a_refused_update():
    stage = TopK(ratio=0.5)
    state: dict = {}
    stage.encode(delta(w=np.array([1.0, 2.0], np.float32)), state, None)
    kept = state["residual"].copy()
    with pytest.raises(ParamsError, match="NaN"):
        stage.encode(delta(w=np.array([np.nan, 2.0], np.float32)), state, None)
    np.testing.assert_array_equal(state["residual"], kept)
    other = stage.encode(delta(w=np.array([1.0, 2.0, 3.0], np.float32)), state, None)
    assert other[VALUES].tolist() == [2.0, 3.0]  # no stale residual of another shape


def test_empty_and_integer_tensors():
    stage = TopK(ratio=0.5)
    update = delta(count=np.array([3], np.int64), e=np.zeros((0,), np.float32), w=np.array([1.0, -2.0], np.float64))
    wire = stage.encode(update, {}, None)
    assert wire.schema == (("count", (1,), "int64"), (INDICES, (1,), "uint8"), (VALUES, (1,), "float64"))
    back = stage.decode(wire, update.schema)
    assert back.schema == update.schema and back["w"].tolist() == [0.0, -2.0] and back["count"].tolist() == [3]
    nothing = delta(count=np.array([3], np.int64))
    assert stage.decode(stage.encode(nothing, {}, None), nothing.schema) == nothing


@pytest.mark.parametrize("bits", [None, 8])
def test_one_percent_of_the_digits_model_is_over_20_times_smaller(bits):
    update = random_update(0, DIGITS)
    wire = TopK(0.01, bits).encode(update, {}, np.random.default_rng(0))
    assert wire[INDICES].shape == (49,) and wire[INDICES].dtype == np.uint16
    assert update.encoded_size / wire.encoded_size >= 20
    large = random_update(0, {"w": (500, 400)})  # uint32 indices: 8 (5 with bits) bytes per kept value
    assert large.encoded_size / TopK(0.01, bits).encode(large, {}, np.random.default_rng(0)).encoded_size >= 49


def good_wire(bits=None):
    update = delta(w=np.array([0.5, -2.0, 1.0, 3.0, 0.1], np.float32))
    return TopK(0.4, bits).encode(update, {}, np.random.default_rng(0)), update.schema


@pytest.mark.parametrize(
    ("bits", "change", "error", "message"),
    [
        (None, {INDICES: np.array([1, 5], np.uint8)}, ParamsError, "below 5"),  # out of range
        (None, {INDICES: np.array([3, 1], np.uint8)}, ParamsError, "strictly increasing"),
        (None, {INDICES: np.array([3, 3], np.uint8)}, ParamsError, "strictly increasing"),
        (None, {INDICES: np.array([1, 3, 4], np.uint8)}, SchemaMismatch, "topk:indices"),  # wrong size
        (None, {INDICES: np.array([1, 3], np.uint16)}, SchemaMismatch, "dtype"),
        (None, {VALUES: np.array([np.nan, 1.0], np.float32)}, ParamsError, "NaN"),
        (8, {RANGE: np.array([np.nan, 1.0])}, ParamsError, "not a range"),
        (8, {RANGE: np.array([0.0, -1.0])}, ParamsError, "not a range"),
        (8, {CODES: np.zeros(3, np.uint8)}, SchemaMismatch, "topk:codes"),
        (2, {CODES: np.array([0b0101_0001], np.uint8)}, ParamsError, "padding bits"),
    ],
)
def test_malformed_wire_updates_are_refused(bits, change, error, message):
    wire, schema = good_wire(bits)
    TopK(0.4, bits).decode(wire, schema)
    with pytest.raises(error, match=message):
        TopK(0.4, bits).decode(Params.from_arrays({**dict(wire), **change}, ParamsKind.DELTA), schema)


def test_settings_travel_in_the_fit_config_and_bad_ones_are_config_errors():
    config = UpdatePipeline([TopK(0.05, bits=4)]).to_config()
    assert config == {"update.stages": "topk", "update.topk.ratio": 0.05, "update.topk.bits": 4}
    stage = UpdatePipeline.from_config(config)[0].stages[0]
    assert (stage.ratio, stage.bits) == (0.05, 4)
    assert UpdatePipeline([TopK(0.05)]).to_config() == {"update.stages": "topk", "update.topk.ratio": 0.05}
    for bad in ({"update.topk.ratio": 0.0}, {"update.topk.ratio": 1.5}, {"update.topk.ratio": "x"},
                {"update.topk.bits": 9}, {"update.topk.k": 3}):
        with pytest.raises(ConfigError):
            UpdatePipeline.from_config({"update.stages": "topk", **bad})


def test_pipeline_decodes_what_a_node_runner_sent():
    pipeline = UpdatePipeline([TopK(0.1)])
    update = random_update(5)
    wire = pipeline.encode(update, {}, seed=1)
    assert wire.schema == pipeline.wire_schema(update.schema)
    back = pipeline.decode(wire, update.schema)
    assert np.count_nonzero(flat(back)) == 4


def test_module_examples():
    assert doctest.testmod(topk).failed == 0
