"""The Python entry point: :func:`simulate`, and the hooks that steer a run round by round.

::

    import potluck

    result = potluck.simulate(task="examples.numpy_task:task", rounds=5, nodes=4, fit={"lr": 0.5})
    print(result.records[-1].loss, result.run_dir)

A hook is called after each committed round with the round's record and the new model.
It may evaluate the model on data of its own, change the fit settings later rounds'
nodes are given, or stop the run, by returning a :class:`RoundDecision`::

    class Halve(potluck.Hook):
        def after_round(self, record, params):
            if record.round == 3:
                return potluck.RoundDecision(fit={"lr": 0.25})
            if record.loss < 0.1:
                return potluck.RoundDecision(stop="loss below 0.1")
            return None

A plain function ``(record, params) -> RoundDecision | None`` works as a hook too.
This module sits above the layers (it may import any of them) and is imported only
when one of its names is first used, so ``import potluck`` stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from potluck.apps.simulate import SimulationResult, run_simulation
from potluck.core.config import SimulationConfig
from potluck.core.errors import ConfigError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.runtime.coordinator import RoundDecision, RoundHook
from potluck.strategies.base import Strategy
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import EvalOutput, Task

__all__ = ["AfterRound", "EvaluateOn", "Hook", "RoundDecision", "SimulationResult", "simulate"]

AfterRound = Callable[[RoundRecord, Params], "RoundDecision | None"]


class Hook:
    """A per-round hook with nothing to do by default: override :meth:`after_round`.

    The run directory has committed the round (checkpoint, ``metrics.jsonl``) before any
    hook is called, so a hook that raises ends the run with every committed round kept.
    """

    def after_round(self, record: RoundRecord, params: Params) -> RoundDecision | None:
        """Called once per committed round, in round order; ``params`` is the new global model.

        Return ``RoundDecision(fit={...})`` to change the fit settings of every later
        round, ``RoundDecision(stop="why")`` to end the run now, or ``None``."""
        return None

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> RoundDecision | None:
        """The coordinator's call (see ``runtime.coordinator.RoundHook``); calls :meth:`after_round`."""
        return self.after_round(record, params)


class EvaluateOn(Hook):
    """Evaluates each ``every``-th round's model on ``data`` with ``task``; keeps the metrics.

    ``results`` maps a round to its metrics (``loss`` and the task's others). The task
    must be able to evaluate the run's parameters: the same kind of task as the run's,
    built for the same data shape (``task.build(DataInfo.from_dataset(data), seed)``)
    when its ``evaluate`` needs a built model (PyTorch tasks do). With ``stop_below``
    (a value of ``metric``, lower better) or ``stop_above`` (higher better) the run
    stops once the metric gets there.
    """

    def __init__(self, task: Task, data: Dataset, *, every: int = 1, metric: str = "loss",
                 stop_below: float | None = None, stop_above: float | None = None) -> None:
        if every < 1:
            raise ConfigError(f"EvaluateOn: every must be ≥ 1, got {every}")
        self.task, self.data, self.every, self.metric = task, data, every, metric
        self.stop_below, self.stop_above = stop_below, stop_above
        self.results: dict[int, dict[str, float]] = {}

    def after_round(self, record: RoundRecord, params: Params) -> RoundDecision | None:
        if record.round % self.every:
            return None
        out: EvalOutput = self.task.evaluate(params, self.data)
        metrics = out.as_dict()
        self.results[record.round] = metrics
        if self.metric not in metrics:
            raise ConfigError(f"EvaluateOn: the task reports {sorted(metrics)}, not {self.metric!r}")
        value = metrics[self.metric]
        if self.stop_below is not None and value < self.stop_below:
            return RoundDecision(stop=f"{self.metric} {value:.4g} < {self.stop_below:g} on {self.data.source}")
        if self.stop_above is not None and value > self.stop_above:
            return RoundDecision(stop=f"{self.metric} {value:.4g} > {self.stop_above:g} on {self.data.source}")
        return None


@runtime_checkable
class _Committing(Protocol):
    """What the coordinator calls: an object with ``on_commit`` (``runtime.coordinator.RoundHook``)."""

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> RoundDecision | None:
        ...


class _FunctionHook:
    """A plain function ``(record, params) -> RoundDecision | None`` as a round hook."""

    def __init__(self, function: AfterRound) -> None:
        self.function = function

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> RoundDecision | None:
        decision = self.function(record, params)
        if decision is not None and not isinstance(decision, RoundDecision):
            raise ConfigError(f"hook {self.function!r} returned a {type(decision).__name__}; "
                              "return a potluck.RoundDecision or None")
        return decision


def round_hook(hook: RoundHook | AfterRound) -> RoundHook:
    """``hook`` as the coordinator calls it: a :class:`Hook` (or anything with ``on_commit``)
    as it is, a function wrapped. Raises ``ConfigError`` for anything else."""
    if isinstance(hook, _Committing):
        return hook
    if callable(hook):
        return _FunctionHook(hook)
    raise ConfigError(f"a hook is a potluck.Hook or a function (record, params) -> RoundDecision | None; "
                      f"got a {type(hook).__name__}")


def simulate(config: SimulationConfig | None = None, *, hooks: Iterable[RoundHook | AfterRound] = (),
             resume: bool = False, **settings: Any) -> SimulationResult:
    """Run a simulation, as ``potluck simulate`` does; its records, final model and run directory.

    ``config`` defaults to ``SimulationConfig()`` (the bundled digits run); ``settings``
    change any of its fields by name (``rounds=5``, ``task="my_module:task"``,
    ``strategy="my_rules:Clipped"``, ``fit={"lr": 0.1}``) and are checked the same way.
    ``hooks`` are called after each committed round, in order (see :class:`Hook`).
    Nothing is printed; the run directory (``run_dir``, default ``runs/<time>-<task>``)
    holds what the command line's run holds. ``result.stopped`` says why the run ended
    early, if a hook or a privacy budget ended it.

    Raises ``ConfigError``, ``DataError``, ``TaskError``, ``RunDirError`` or
    ``RoundFailed`` with a one-line reason (all ``PotluckError``).
    """
    if config is not None and not isinstance(config, SimulationConfig):
        raise ConfigError(f"potluck.simulate: config must be a SimulationConfig, got a {type(config).__name__}")
    base = config if config is not None else SimulationConfig()
    if settings:
        current = {name: getattr(base, name) for name in base.__dataclass_fields__}
        base = SimulationConfig.from_mapping({**current, **settings}, source="potluck.simulate")
    return run_simulation(base, resume=resume, hooks=[round_hook(h) for h in hooks])
