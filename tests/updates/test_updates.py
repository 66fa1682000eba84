"""The update pipeline seam: config round trip, node/server symmetry, the coordinator's use."""

from __future__ import annotations

import numpy as np
import pytest

from potluck.core.errors import BudgetExhausted, ConfigError, ParamsError
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.runtime.node import NodeData, NodeRunner
from potluck.strategies import make_strategy
from potluck.testing import ScriptedPool
from potluck.updates.pipeline import STAGES, UpdatePipeline, UpdateStage, register


@register
class Half(UpdateStage):
    """Test stage: sends float16 copies (a schema change) and remembers how often it ran."""

    name = "test-half"

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def settings(self):
        return {"scale": self.scale}

    @classmethod
    def from_settings(cls, settings):
        unknown = set(settings) - {"scale"}
        if unknown:
            raise ConfigError(f"unknown {sorted(unknown)}")
        return cls(float(settings.get("scale", 1.0)))

    def encode(self, update, state, rng):
        state["calls"] = state.get("calls", 0) + 1
        return Params.from_arrays({k: (v * self.scale).astype(np.float16) for k, v in update.items()}, update.kind)

    def decode(self, wire, schema):
        return Params.from_arrays({n: wire[n].astype(d) / self.scale for n, _, d in schema}, ParamsKind.DELTA)

    def wire_schema(self, schema):
        return tuple((n, s, "float16") for n, s, _ in schema)


START = Params.from_arrays({"w": np.zeros(4, np.float32)})
SCHEMA = START.schema


def test_config_round_trip_keeps_stages_and_separates_task_settings():
    pipeline = UpdatePipeline([Half(2.0)])
    config = {"lr": 0.1, **pipeline.to_config()}
    assert config == {"lr": 0.1, "update.stages": "test-half", "update.test-half.scale": 2.0}
    rebuilt, rest = UpdatePipeline.from_config(config)
    assert rest == {"lr": 0.1} and [type(s) for s in rebuilt.stages] == [Half] and rebuilt.stages[0].scale == 2.0
    assert UpdatePipeline.from_config({"lr": 0.1}) [1] == {"lr": 0.1}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"update.stages": "nope"}, "unknown update stage 'nope'"),
        ({"update.stages": 3}, "comma-separated string"),
        ({"update.stages": "test-half", "update.other.x": 1}, "belongs to no stage"),
        ({"update.stages": "test-half", "update.test-half.bogus": 1}, "unknown"),
    ],
)
def test_bad_update_config_is_a_config_error(config, message):
    with pytest.raises(ConfigError, match=message):
        UpdatePipeline.from_config(config)


def test_decode_undoes_encode_and_checks_schemas():
    pipeline = UpdatePipeline([Half(4.0)])
    update = Params.from_arrays({"w": np.array([0.5, -1.0, 2.0, 0.25], np.float32)}, ParamsKind.DELTA)
    state: dict = {}
    wire = pipeline.encode(update, state, seed=1)
    assert wire.schema == (("w", (4,), "float16"),) and state == {"test-half": {"calls": 1}}
    np.testing.assert_array_equal(pipeline.decode(wire, SCHEMA)["w"], update["w"])
    with pytest.raises(ParamsError, match="encoded update"):
        pipeline.decode(update, SCHEMA)  # float32: not what this pipeline sends
    assert "test-half" in STAGES


def test_node_runner_strips_update_keys_and_keeps_per_node_state():
    seen = []

    class Echo:
        name = "echo"

        def fit(self, params, data, config, seed):
            seen.append(dict(config))
            from potluck.tasks.protocol import FitOutput

            return FitOutput(Params.from_arrays({"w": params["w"] + 1}), 3, {})

    runner = NodeRunner(Echo(), {"a": NodeData([], [])})
    config = {"lr": 0.1, **UpdatePipeline([Half()]).to_config()}
    for rnd in (1, 2):
        result = runner.fit(FitInstruction(rnd, "a", START, config, 5))
    assert seen == [{"lr": 0.1}, {"lr": 0.1}]
    assert result.params.schema == (("w", (4,), "float16"),)
    assert runner.update_state == {"a": {"test-half": {"calls": 2}}}


class Budget:
    """Test guard: allows two rounds, reports a growing figure."""

    def before_round(self, rnd):
        if rnd > 2:
            raise BudgetExhausted(f"round {rnd} would exceed the budget")

    def round_extras(self, rnd):
        return {"epsilon": 0.5 * rnd}


def test_coordinator_decodes_counts_bytes_and_stops_at_the_budget():
    pipeline = UpdatePipeline([Half(2.0)])

    def node(ins: FitInstruction) -> FitResult:
        update = Params.from_arrays({"w": np.full(4, 0.25, np.float32)}, ParamsKind.DELTA)
        pipeline_of_node, _ = UpdatePipeline.from_config(ins.config)
        return FitResult(ins.round, ins.node_id, pipeline_of_node.encode(update, {}, ins.seed), 10, {})

    records = []

    class Keep:
        def on_commit(self, record, params, strategy):
            records.append(record)

    c = Coordinator(ScriptedPool({"a": node, "b": node}), make_strategy("fedavg"), RoundPolicy(rounds=5),
                    hooks=[Keep()], updates=pipeline, guards=[Budget()])
    final = c.run(START)
    assert [r.round for r in records] == [1, 2] and c.stopped == "round 3 would exceed the budget"
    np.testing.assert_allclose(final["w"], 0.5)  # two rounds of +0.25, decoded from float16 ×2
    wire = pipeline.encode(Params.from_arrays({"w": np.zeros(4, np.float32)}, ParamsKind.DELTA), {}, 0)
    assert records[0].bytes_up == 2 * wire.encoded_size
    assert [r.extras for r in records] == [{"epsilon": 0.5}, {"epsilon": 1.0}]
    assert records[1].to_json()["extras"] == {"epsilon": 1.0}
