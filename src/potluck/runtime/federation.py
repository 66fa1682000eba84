"""A simulated federation from a few settings: data → held-out test set + node splits.

:class:`FederationSpec` is small and picklable. Every process that serves virtual
nodes rebuilds the same federation from it (data loading and partitioning are seeded),
so a worker receives a spec once instead of every node's data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from potluck.core.errors import DataError
from potluck.core.params import Params
from potluck.core.seeds import derive_seed, rng_for
from potluck.runtime.attacks import Attack, choose_attackers
from potluck.runtime.node import NodeData
from potluck.tasks.builtin import resolve_task
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.data.partition import partition
from potluck.tasks.protocol import DataInfo, Task


@dataclass(frozen=True)
class FederationSpec:
    """``test_fraction`` of the data is held out (stratified) for centralized evaluation,
    unless ``test_data`` names a test set of its own;
    the rest is split over ``nodes`` by ``partition``; each node keeps ``val_fraction``
    of its split for federated evaluation. With an ``attack`` other than ``none``,
    ``attack_fraction`` of the nodes corrupt their updates (see runtime/attacks.py)."""

    task: str = "digits"
    data_path: str | None = None
    test_data: str | None = None
    nodes: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    min_examples: int = 1
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    label_column: str = "label"
    group_column: str | None = None
    attack: str = "none"
    attack_fraction: float = 0.0
    fit: dict[str, object] = field(default_factory=dict)  # the run's fit settings, for tasks whose model they shape

    def node_id(self, index: int) -> str:
        return f"node-{index:0{max(3, len(str(self.nodes - 1)))}d}"


@dataclass
class Federation:
    spec: FederationSpec
    task: Task
    info: DataInfo
    initial_params: Params
    nodes: dict[str, NodeData]
    test: Dataset
    attacks: dict[str, Attack] = field(default_factory=dict)  # attacking node -> its attack


def build_federation(spec: FederationSpec) -> Federation:
    """Load, split and build the model; raise ``DataError``/``TaskError`` on bad input."""
    task = resolve_task(spec.task, label_column=spec.label_column, group_column=spec.group_column, options=spec.fit)
    data = task.load_data(Path(spec.data_path) if spec.data_path else None)
    if len(data) < 2:
        raise DataError(f"{data.source}: {len(data)} examples, need at least 2")
    info = DataInfo.from_dataset(data)
    if spec.test_data is not None:  # a test set of its own: every example of data_path goes to the nodes
        train, test = data, task.load_data(Path(spec.test_data))
    else:
        train_idx, test_idx = stratified_split(data.y, spec.test_fraction, derive_seed(spec.seed, "holdout"))
        train, test = data.subset(train_idx), data.subset(test_idx, source=f"{data.source} (held out)")
    parts = partition(train, spec.partition, spec.nodes, alpha=spec.alpha, seed=derive_seed(spec.seed, "partition"),
                      min_examples=spec.min_examples)
    nodes: dict[str, NodeData] = {}
    for i, idx in enumerate(parts):
        rng = rng_for(spec.seed, "val", i)
        shuffled = rng.permutation(idx)
        n_val = int(len(idx) * spec.val_fraction) if len(idx) > 1 else 0
        node = spec.node_id(i)
        nodes[node] = NodeData(
            train.subset(np.sort(shuffled[n_val:]), source=f"{node} train"),
            train.subset(np.sort(shuffled[:n_val]), source=f"{node} val"),
        )
    initial = task.build(info, derive_seed(spec.seed, "init"))
    attacks: dict[str, Attack] = {}
    if spec.attack != "none":
        attacks = dict.fromkeys(choose_attackers(list(nodes), spec.attack_fraction, spec.seed), Attack(spec.attack))
    return Federation(spec, task, info, initial, nodes, test, attacks)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, held out): ``fraction`` of each class held out, seeded."""
    if not 0 <= fraction < 1:
        raise DataError(f"the held-out fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        held.append(idx[: int(round(len(idx) * fraction))])
    test = np.sort(np.concatenate(held)) if held else np.array([], dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), test
