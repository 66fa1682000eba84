"""Test helpers users can use too: a pool of scripted in-memory nodes, a fake clock, and
:func:`run_rounds`, which runs a Task and a Strategy for a few rounds in memory (no
processes, no run directory), so a user's own tests can check that they learn::

    final, records = run_rounds(MyTask(), {"a": part_a, "b": part_b}, rounds=3, fit={"lr": 0.1})
    assert records[-1].loss < records[0].loss

>>> pool = ScriptedPool({"a": lambda ins: FitResult(ins.round, "a", zero_delta(ins.params), 10)})

Both keep a test independent of the machine's speed: a ``ScriptedPool`` answers at once
and in a chosen order, and a ``FakeClock`` given to whatever takes a ``clock`` (the
``Coordinator``, ``InProcessPool``, ``FleetPool``) makes its deadlines pass only when
the test says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from potluck.backends.inprocess import InProcessPool
from potluck.core.errors import NodeError, NodeFailed
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.core.records import RoundRecord
from potluck.runtime.coordinator import Coordinator, RoundDecision, RoundHook, RoundPolicy
from potluck.runtime.node import NodeData
from potluck.runtime.pool import EvaluateOutcome, FitOutcome, NodePool
from potluck.strategies.base import Strategy
from potluck.strategies.presets import FedAvg
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo, Task

FitScript = Callable[[FitInstruction], FitResult]


def zero_delta(params: Params) -> Params:
    return Params.from_arrays({k: np.zeros_like(v) for k, v in params.items()}, ParamsKind.DELTA, copy=False)


class ScriptedPool(NodePool):
    """Each node is a function of its instruction. ``order`` (optional) reorders results,
    to test that the coordinator does not depend on arrival order. A script that raises
    yields ``NodeFailed`` (or the ``NodeError`` it raised). Asked to evaluate, every node
    reports a loss of 0 on one example and ``metrics`` (none by default)."""

    def __init__(self, scripts: Mapping[str, FitScript], order: Callable[[list[str]], list[str]] | None = None,
                 metrics: Mapping[str, float] | None = None) -> None:
        self.scripts = dict(scripts)
        self.order = order
        self.metrics = dict(metrics or {})
        self.calls: list[FitInstruction] = []

    def node_ids(self) -> Sequence[str]:
        return list(self.scripts)

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        by_node = {ins.node_id: ins for ins in instructions}
        nodes = self.order(list(by_node)) if self.order else list(by_node)
        for node in nodes:
            self.calls.append(by_node[node])
            try:
                yield self.scripts[node](by_node[node])
            except NodeError as exc:
                yield exc
            except Exception as exc:
                yield NodeFailed(node, f"{type(exc).__name__}: {exc}")

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        for ins in instructions:
            yield EvaluateResult(ins.round, ins.node_id, 0.0, 1, dict(self.metrics))

    def close(self) -> None:
        """Nothing to release."""


class FakeClock:
    """A clock that moves only when told to: ``clock.advance(5)``.

    A float in seconds, like ``time.monotonic()``; reading it from other threads is
    safe. Code that *sleeps* or waits on a condition still waits in real time: a
    ``FleetPool`` on a fake clock re-checks its deadline at least every 0.2 s, so after
    ``advance`` past a deadline its round ends within that.

    >>> clock = FakeClock()
    >>> clock.advance(2.5)
    >>> clock()
    2.5
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Records:
    """Keeps each committed round's record (a round hook)."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> RoundDecision | None:
        self.records.append(record)
        return None


def run_rounds(task: Task, parts: Mapping[str, Dataset], *, strategy: Strategy | None = None, rounds: int = 3,
               fit: Mapping[str, bool | int | float | str] | None = None, test: Dataset | None = None,
               seed: int = 0, hooks: Sequence[RoundHook] = ()) -> tuple[Params, list[RoundRecord]]:
    """Run ``rounds`` rounds of ``task`` over nodes holding ``parts`` (node id → its data),
    in this process; the final model and each round's record.

    The model is ``task.build`` for the parts' shape and classes, seeded by ``seed``;
    ``strategy`` defaults to FedAvg, ``fit`` are the ``-F`` settings. With ``test`` the
    records carry the metrics it reports (centralized evaluation), else none.
    Nothing is written to disk. Raises ``RoundFailed`` when a round gets no update
    (a node's fit that raises is one failed node, as in a real run).
    """
    if not parts:
        raise ValueError("run_rounds needs at least one node's data")
    first = next(iter(parts.values()))
    info = DataInfo(DataInfo.from_dataset(first).input_shape, max(d.num_classes for d in parts.values()))
    no_val = first.subset(np.array([], dtype=np.int64))
    pool = InProcessPool(task, {node: NodeData(data, no_val) for node, data in parts.items()})
    kept = _Records()
    evaluator = (lambda p: task.evaluate(p, test)) if test is not None else None
    coordinator = Coordinator(pool, strategy or FedAvg(), RoundPolicy(rounds=rounds, seed=seed), fit_config=fit,
                              evaluator=evaluator, hooks=[kept, *hooks])
    try:
        final = coordinator.run(task.build(info, seed))
    finally:
        pool.close()
    return final, kept.records
