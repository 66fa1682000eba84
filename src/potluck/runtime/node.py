"""What a node does with an instruction, the same for every backend.

A virtual node is just its data split, so one Task (one model instance) can serve
many of them in turn: :class:`NodeRunner` holds the Task and looks up the node's data.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from potluck.core.errors import NodeFailed, NodeLeft, PotluckError
from potluck.core.messages import EvaluateInstruction, EvaluateResult, FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.attacks import Attack
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import Task
from potluck.updates.pipeline import UpdatePipeline


@dataclass(frozen=True)
class NodeData:
    """One node's local data: ``train`` for fitting, ``val`` (maybe empty) for evaluation."""

    train: Dataset
    val: Dataset


def delta(trained: Params, start: Params) -> Params:
    """``trained − start`` per array, as a DELTA; schemas must match."""
    trained.check_schema(start.schema, what="trained parameters")
    return Params.from_arrays(
        {k: trained[k] - start[k] for k in start}, ParamsKind.DELTA, copy=False
    )


class NodeRunner:
    """Runs instructions for the nodes whose data it holds, with one Task instance.

    Nodes named in ``attacks`` (simulation only) corrupt their delta after training,
    before any update stage encodes it.
    """

    def __init__(self, task: Task, data: Mapping[str, NodeData], attacks: Mapping[str, Attack] | None = None) -> None:
        self.task = task
        self.data = data
        self.attacks = dict(attacks or {})
        self.update_state: dict[str, dict[str, Any]] = {}  # per node: what update stages keep between rounds

    def _node(self, node_id: str) -> NodeData:
        try:
            return self.data[node_id]
        except KeyError:
            raise NodeLeft(node_id, "no such node in this pool") from None

    def fit(self, ins: FitInstruction) -> FitResult:
        node = self._node(ins.node_id)
        started = time.perf_counter()
        try:
            pipeline, task_config = UpdatePipeline.from_config(ins.config)
            out = self.task.fit(ins.params, node.train, task_config, ins.seed)
            update = delta(out.params, ins.params)
            if ins.node_id in self.attacks:
                update = self.attacks[ins.node_id].apply(update, ins.seed)
            if pipeline:
                update = pipeline.encode(update, self.update_state.setdefault(ins.node_id, {}), ins.seed)
        except PotluckError as exc:
            raise NodeFailed(ins.node_id, f"fit failed: {exc}") from exc
        except Exception as exc:  # user Task code: any failure is this node's failure
            raise NodeFailed(ins.node_id, f"fit raised {type(exc).__name__}: {exc}") from exc
        metrics = {**out.metrics, "fit_seconds": time.perf_counter() - started}
        return FitResult(ins.round, ins.node_id, update, out.num_examples, metrics)

    def exchange(self, node_id: str, step: str, payload: bytes) -> bytes:
        """One step of a multi-message protocol for ``node_id`` (``secagg/<step>``: secure
        aggregation, ``updates/secagg/protocol.py``); its state lives in the node's
        update state, where the update stage that masks the fit finds it."""
        self._node(node_id)
        kind, _, sub = step.partition("/")
        if kind != "secagg":
            raise NodeFailed(node_id, f"unknown exchange step {step!r}")
        from potluck.updates.secagg.protocol import node_step  # loads `cryptography`: only when used

        state = self.update_state.setdefault(node_id, {}).setdefault("secagg", {})
        try:
            return node_step(state, node_id, sub, payload)
        except PotluckError as exc:
            raise NodeFailed(node_id, f"{step} failed: {exc}") from exc
        except Exception as exc:  # a malformed message the protocol did not anticipate
            raise NodeFailed(node_id, f"{step} raised {type(exc).__name__}: {exc}") from exc

    def evaluate(self, ins: EvaluateInstruction) -> EvaluateResult:
        node = self._node(ins.node_id)
        if len(node.val) == 0:
            return EvaluateResult(ins.round, ins.node_id, float("nan"), 0, {})
        try:
            out = self.task.evaluate(ins.params, node.val)
        except PotluckError as exc:
            raise NodeFailed(ins.node_id, f"evaluate failed: {exc}") from exc
        except Exception as exc:
            raise NodeFailed(ins.node_id, f"evaluate raised {type(exc).__name__}: {exc}") from exc
        return EvaluateResult(ins.round, ins.node_id, out.loss, out.num_examples, dict(out.metrics))
