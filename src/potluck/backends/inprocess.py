"""Every virtual node in this process, one after another, sharing one Task instance.

The fastest backend for small models: no serialisation, no worker start-up. A call
cannot be interrupted, so the deadline is checked between nodes: instructions not yet
started when it passes yield ``NodeTimedOut``.

Given a federation's :class:`~potluck.runtime.federation.VirtualNodes`, a node's data
is made only when the node is asked to fit or evaluate, and the node ids are the
federation's lazy sequence: a million nodes cost no objects until sampled. A node
without validation examples answers an evaluation without its data being made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from potluck.core.errors import NodeError, NodeTimedOut
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction
from potluck.runtime.attacks import Attack
from potluck.runtime.federation import VirtualNodes
from potluck.runtime.node import NodeData, NodeRunner
from potluck.runtime.pool import EvaluateOutcome, ExchangeOutcome, ExchangeReply, FitOutcome, NodePool
from potluck.tasks.protocol import Task

Ins = TypeVar("Ins", FitInstruction, EvaluateInstruction)
R = TypeVar("R")


class InProcessPool(NodePool):
    def __init__(
        self,
        task: Task,
        data: Mapping[str, NodeData],
        clock: Callable[[], float] = time.monotonic,
        attacks: Mapping[str, Attack] | None = None,
    ) -> None:
        self.runner = NodeRunner(task, data, attacks)
        self._virtual = data if isinstance(data, VirtualNodes) else None
        self._ids: Sequence[str] = data.ids if isinstance(data, VirtualNodes) else list(data)
        self._clock = clock

    def node_ids(self) -> Sequence[str]:
        return self._ids

    def fit(self, instructions: Sequence[FitInstruction], timeout: float) -> Iterator[FitOutcome]:
        return self._run(instructions, timeout, self.runner.fit)

    def evaluate(self, instructions: Sequence[EvaluateInstruction], timeout: float) -> Iterator[EvaluateOutcome]:
        return self._run(instructions, timeout, self._evaluate)

    def _evaluate(self, ins: EvaluateInstruction) -> EvaluateResult:
        """The runner's evaluation; for a virtual node without validation examples, the
        runner's empty answer without making the node's data."""
        if self._virtual is not None and self._virtual.has_validation(ins.node_id) is False:
            return EvaluateResult(ins.round, ins.node_id, float("nan"), 0, {})
        return self.runner.evaluate(ins)

    def exchange(self, step: str, payloads: Mapping[str, bytes], timeout: float) -> Iterator[ExchangeOutcome]:
        """One protocol step for each node in ``payloads`` (see ``NodePool.exchange``)."""
        deadline = self._clock() + timeout
        for node, payload in payloads.items():
            if self._clock() >= deadline:
                yield NodeTimedOut(node, f"deadline of {timeout:g} s passed before {step} ran")
                continue
            try:
                yield ExchangeReply(node, self.runner.exchange(node, step, payload))
            except NodeError as exc:
                yield exc

    def _run(self, instructions: Sequence[Ins], timeout: float, call: Callable[[Ins], R]) -> Iterator[R | NodeError]:
        deadline = self._clock() + timeout
        for ins in instructions:
            if self._clock() >= deadline:
                yield NodeTimedOut(ins.node_id, f"round deadline of {timeout:g} s passed before it ran")
                continue
            try:
                yield call(ins)
            except NodeError as exc:
                yield exc

    def close(self) -> None:
        """Nothing to release."""
