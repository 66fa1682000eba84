"""The Task protocol: the user code that says *what* to compute.

A Task is written once and runs unchanged in simulation and deployment. It loads data
from a path, builds its model, trains locally from given parameters, and evaluates::

    task.load_data(path)          -> Dataset          (on each node, from its own files)
    task.build(info, seed)        -> Params           (once per process: the model)
    task.fit(params, data, config, seed)   -> FitOutput
    task.evaluate(params, data)            -> EvalOutput

``build`` creates the model for a data shape (``DataInfo``) and returns its initial
parameters; a process builds once and reuses the model for every virtual node it
serves. ``fit`` returns the trained full weights; the runtime turns them into a delta.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from potluck.core.messages import ConfigDict
from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data: one example's shape, the class count."""

    input_shape: tuple[int, ...]
    num_classes: int

    @classmethod
    def from_dataset(cls, data: Dataset) -> DataInfo:
        return cls(tuple(int(d) for d in data.x.shape[1:]), data.num_classes)

    def to_dict(self) -> dict[str, object]:
        return {"input_shape": list(self.input_shape), "num_classes": self.num_classes}


@dataclass(frozen=True)
class FitOutput:
    """Trained full weights, the number of examples used, and training metrics."""

    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalOutput:
    """Mean loss over ``num_examples`` and further metrics (``accuracy`` in [0, 1])."""

    loss: float
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Task(Protocol):
    """User code for one model; see the module docstring for the call order."""

    name: str

    def load_data(self, path: Path | None) -> Dataset:
        """All examples at ``path`` (``None``: the task's bundled default, if it has one)."""
        ...

    def build(self, info: DataInfo, seed: int) -> Params:
        """Create the model for ``info``; return its initial parameters (seeded)."""
        ...

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        """Train from ``params`` on ``data``; ``seed`` fixes shuffling for this call."""
        ...

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        ...
