"""The in-process pool: deadlines between nodes, failures as outcomes."""

from __future__ import annotations

import numpy as np

from potluck.backends.inprocess import InProcessPool
from potluck.core.errors import NodeFailed, NodeLeft, NodeTimedOut
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.node import NodeData
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import EvalOutput, FitOutput
from potluck.testing import FakeClock


class CountingTask:
    """Adds 1 to every weight; takes `cost` seconds of fake time; fails on demand."""

    name = "counting"

    def __init__(self, clock: FakeClock, cost: float = 1.0, fail_on: str | None = None) -> None:
        self.clock, self.cost, self.fail_on = clock, cost, fail_on

    def load_data(self, path):
        return Dataset(np.zeros((1, 2), np.float32), np.zeros(1, np.int64))

    def build(self, info, seed):
        return Params.from_arrays({"w": np.zeros(2, np.float32)})

    def fit(self, params, data, config, seed):
        self.clock.advance(self.cost)
        if data.source == self.fail_on:
            raise ValueError("boom")
        return FitOutput(Params.from_arrays({"w": params["w"] + 1}), len(data))

    def evaluate(self, params, data):
        return EvalOutput(0.5, len(data), {"accuracy": 1.0})


def nodes(n: int) -> dict[str, NodeData]:
    data = Dataset(np.zeros((4, 2), np.float32), np.arange(4) % 2)
    return {f"n{i}": NodeData(Dataset(data.x, data.y, source=f"n{i}"), data.subset(np.arange(1))) for i in range(n)}


START = Params.from_arrays({"w": np.zeros(2, np.float32)})


def test_fit_returns_deltas_and_failures_as_outcomes():
    clock = FakeClock()
    pool = InProcessPool(CountingTask(clock, fail_on="n1"), nodes(3), clock=clock)
    out = list(pool.fit([FitInstruction(1, n, START) for n in ("n0", "n1", "n2", "ghost")], timeout=100))
    assert isinstance(out[0], FitResult) and out[0].params.kind is ParamsKind.DELTA
    np.testing.assert_array_equal(out[0].params["w"], [1, 1])
    assert isinstance(out[1], NodeFailed) and "ValueError: boom" in str(out[1])
    assert isinstance(out[2], FitResult)
    assert isinstance(out[3], NodeLeft)


def test_instructions_after_the_deadline_time_out():
    clock = FakeClock()
    pool = InProcessPool(CountingTask(clock, cost=4.0), nodes(4), clock=clock)
    out = list(pool.fit([FitInstruction(1, n, START) for n in pool.node_ids()], timeout=10))
    kinds = [type(o).__name__ for o in out]
    assert kinds == ["FitResult", "FitResult", "FitResult", "NodeTimedOut"]
    assert isinstance(out[3], NodeTimedOut) and out[3].node_id == "n3"
