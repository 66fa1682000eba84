"""A simulated federation from a few settings: data → held-out test set + node splits.

:class:`FederationSpec` is small and picklable. Every process that serves virtual
nodes rebuilds the same federation from it (data loading and partitioning are seeded),
so a worker receives a spec once instead of every node's data.

A virtual node costs bytes, not objects (:class:`VirtualNodes`): its id is made from its
index when read, and its data when it is sampled, from the partition's one index array
or, for a task that generates data (the synthetic task), from (seed, node).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

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
from potluck.tasks.synthetic import VirtualNodeSource


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


class NodeIds(Sequence[str]):
    """The ids of ``spec.nodes`` virtual nodes, ``spec.node_id(i)`` for i in 0 … nodes − 1,
    made when read: a million nodes cost no strings until sampled."""

    def __init__(self, spec: FederationSpec) -> None:
        self.spec, self.total = spec, spec.nodes
        self.width = len(spec.node_id(0)) - len("node-")
        self._format = f"node-{{:0{self.width}d}}".format  # spec.node_id's format, bound once

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[str]:
        return map(self._format, range(self.total))  # list(ids) runs at C speed

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return list(map(self._format, range(*i.indices(self.total))))
        if not -self.total <= i < self.total:
            raise IndexError(f"node index {i} out of range for {self.total} nodes")
        return self._format(i % self.total)

    def position(self, node_id: str) -> int | None:
        """The index of ``node_id``, or None when it names none of these nodes."""
        digits = node_id[5:]  # after "node-"
        if len(digits) != self.width or node_id[:5] != "node-" or not (digits.isascii() and digits.isdigit()):
            return None
        i = int(digits)
        return i if i < self.total else None

    def index(self, value: object, start: int = 0, stop: int | None = None) -> int:
        i = self.position(value) if isinstance(value, str) else None
        if i is None or not start <= i < (self.total if stop is None else stop):
            raise ValueError(f"{value!r} is not a node of this federation")
        return i

    def __contains__(self, value: object) -> bool:
        return isinstance(value, str) and self.position(value) is not None


class VirtualNodes(Mapping[str, NodeData]):
    """Node id → its data, made when asked for and not kept: a node costs its share of
    one index array (partitioned data) or nothing at all (generated data) until sampled.

    ``make(i)`` builds node ``i``'s data; ``has_val(i)`` says, without building it,
    whether it has validation examples (federated evaluation skips the nodes without)."""

    def __init__(self, spec: FederationSpec, make: Callable[[int], NodeData], has_val: Callable[[int], bool]) -> None:
        self.ids, self._make, self._has_val = NodeIds(spec), make, has_val

    def __getitem__(self, node_id: str) -> NodeData:
        i = self.ids.position(node_id)
        if i is None:
            raise KeyError(node_id)
        return self._make(i)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.ids

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def has_validation(self, node_id: str) -> bool | None:
        """Whether ``node_id`` has validation examples; None for an unknown node."""
        i = self.ids.position(node_id)
        return None if i is None else self._has_val(i)


@dataclass
class Federation:
    spec: FederationSpec
    task: Task
    info: DataInfo
    initial_params: Params
    nodes: VirtualNodes
    test: Dataset
    attacks: dict[str, Attack] = field(default_factory=dict)  # attacking node -> its attack


def build_federation(spec: FederationSpec) -> Federation:
    """Load, split and build the model; raise ``DataError``/``TaskError`` on bad input.

    A task that generates its nodes' data (:class:`VirtualNodeSource`, the synthetic
    task) loads nothing: each node's examples are made from (seed, node) when asked for."""
    task = resolve_task(spec.task, label_column=spec.label_column, group_column=spec.group_column, options=spec.fit)
    if isinstance(task, VirtualNodeSource):
        seed = derive_seed(spec.seed, "data")
        info = task.data_info()
        nodes = VirtualNodes(spec, lambda i: NodeData(task.node_data(seed, i), _EMPTY),
                             lambda i: False)
        test = task.held_out_data(seed, spec.nodes)
    else:
        info, nodes, test = _partitioned(spec, task)
    initial = task.build(info, derive_seed(spec.seed, "init"))
    attacks: dict[str, Attack] = {}
    if spec.attack != "none":
        attacks = dict.fromkeys(choose_attackers(list(nodes), spec.attack_fraction, spec.seed), Attack(spec.attack))
    return Federation(spec, task, info, initial, nodes, test, attacks)


_NONE = np.array([], dtype=np.int64)
_EMPTY = Dataset(np.zeros((0, 1), dtype=np.float32), _NONE, source="no validation split")


def _partitioned(spec: FederationSpec, task: Task) -> tuple[DataInfo, VirtualNodes, Dataset]:
    """Hold out a test set, split the rest over the nodes; the splits are kept as one
    index array and its offsets, and a node's train/val subsets are made on demand."""
    data = task.load_data(Path(spec.data_path) if spec.data_path else None)
    if len(data) < 2:
        raise DataError(f"{data.source}: {len(data)} examples, need at least 2")
    if spec.test_data is not None:  # a test set of its own: every example of data_path goes to the nodes
        train, test = data, task.load_data(Path(spec.test_data))
    else:
        train_idx, test_idx = stratified_split(data.y, spec.test_fraction, derive_seed(spec.seed, "holdout"))
        train, test = data.subset(train_idx), data.subset(test_idx, source=f"{data.source} (held out)")
    parts = partition(train, spec.partition, spec.nodes, alpha=spec.alpha, seed=derive_seed(spec.seed, "partition"),
                      min_examples=spec.min_examples)
    offsets = np.cumsum([0, *map(len, parts)])
    order = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else _NONE
    del parts

    def n_val(i: int) -> int:
        size = int(offsets[i + 1] - offsets[i])
        return int(size * spec.val_fraction) if size > 1 else 0

    def make(i: int) -> NodeData:
        shuffled = rng_for(spec.seed, "val", i).permutation(order[offsets[i]:offsets[i + 1]])
        node = spec.node_id(i)
        return NodeData(train.subset(np.sort(shuffled[n_val(i):]), source=f"{node} train"),
                        train.subset(np.sort(shuffled[:n_val(i)]), source=f"{node} val"))

    nodes = VirtualNodes(spec, make, lambda i: n_val(i) > 0)
    return DataInfo.from_dataset(data), nodes, test


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
