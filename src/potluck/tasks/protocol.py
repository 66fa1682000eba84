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

Metrics: ``evaluate`` reports ``loss`` and a dict of further metrics; the task names the
one that ranks models in ``metric`` (a :class:`MetricSpec`)::

    classifier      MetricSpec("accuracy", higher_is_better=True)
    language model  MetricSpec("perplexity", higher_is_better=False)
    regression      MetricSpec("mse", higher_is_better=False)

``metric`` is optional: a task without it is ranked by ``loss``, lower better (every
task reports a loss). Read it with :func:`metric_of`, never by probing the task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from potluck.core.errors import TaskError
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
class MetricSpec:
    """The metric that ranks a task's models: its name in :meth:`EvalOutput.as_dict`
    and its direction. ``better(a, b)`` is True when ``a`` beats ``b`` (NaN never does)."""

    name: str = "loss"
    higher_is_better: bool = False

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise TaskError(f"a primary metric needs a name, got {self.name!r}")

    def better(self, a: float, b: float) -> bool:
        if a != a:  # NaN
            return False
        if b != b:
            return True
        return a > b if self.higher_is_better else a < b


LOSS_METRIC = MetricSpec("loss", higher_is_better=False)


@dataclass(frozen=True)
class FitOutput:
    """Trained full weights, the number of examples used, and training metrics."""

    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalOutput:
    """Mean loss over ``num_examples`` and the task's further metrics by name."""

    loss: float
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """Every metric by name, ``loss`` included (a metric named ``loss`` wins)."""
        return {"loss": self.loss, **self.metrics}


@runtime_checkable
class Task(Protocol):
    """User code for one model; see the module docstring for the call order."""

    name: str
    # Optional (see the module docstring): the metric that ranks models; default LOSS_METRIC.
    metric: MetricSpec

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
        """Mean loss and metrics of ``params`` on ``data``; the metrics include the primary one."""
        ...


# What a Task must have; ``metric`` may be left out (the loss ranks models then).
REQUIRED_MEMBERS = ("name", "load_data", "build", "fit", "evaluate")


def metric_of(task: object) -> MetricSpec:
    """The primary metric ``task`` declares, or :data:`LOSS_METRIC` when it declares none.

    Raises ``TaskError`` when ``metric`` is set to something that is not a MetricSpec.
    """
    spec = getattr(task, "metric", LOSS_METRIC)
    if not isinstance(spec, MetricSpec):
        raise TaskError(f"task {getattr(task, 'name', task)!r}: metric must be a MetricSpec, got {spec!r}")
    return spec


@runtime_checkable
class TextGenerator(Protocol):
    """A Task that can continue a prompt (the language-model tasks); ``potluck generate`` uses it."""

    def generate(self, params: Params, prompt: str, *, tokens: int, temperature: float, seed: int) -> str:
        """``prompt`` followed by ``tokens`` sampled tokens, decoded; seeded, so repeatable."""
        ...
