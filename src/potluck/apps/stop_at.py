"""``--stop-at``: end a run once its held-out metric reaches a target.

:class:`StopAt` watches the evaluator's output (``loss`` and every metric the task
reports), and, as a round guard, ends the run cleanly before the round after the one
that reached the target, like a privacy budget does: the run directory holds every
committed round, and the reason is the run's ``stopped``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from potluck.core.errors import BudgetExhausted, ConfigError
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.core.sections import parse_stop_at
from potluck.tasks.protocol import EvalOutput

Evaluator = Callable[[Params], EvalOutput]


class StopAt:
    """A round guard and hook for ``--stop-at METRIC=VALUE`` (see ``core/sections.py``)."""

    def __init__(self, target: str) -> None:
        parsed = parse_stop_at(target)
        if parsed is None:
            raise ConfigError(f"stop_at must be METRIC=VALUE, METRIC>=VALUE or METRIC<=VALUE, got {target!r}")
        self.metric, self.at_least, self.target = parsed
        self.latest = math.nan  # the metric of the last evaluation
        self.reached: str | None = None  # why the run stops, once a committed round reached the target

    def watch(self, evaluator: Evaluator | None) -> Evaluator:
        """``evaluator``, remembering the metric of each evaluation."""
        if evaluator is None:
            raise ConfigError("--stop-at needs held-out data to evaluate on: test_fraction > 0 or --test-data")

        def evaluate(params: Params) -> EvalOutput:
            output = evaluator(params)
            values = output.as_dict()
            if self.metric not in values:
                raise ConfigError(f"--stop-at {self.metric}: the task reports {', '.join(sorted(values))}")
            self.latest = float(values[self.metric])
            return output

        return evaluate

    def on_commit(self, record: RoundRecord, params: Params, strategy: Any) -> None:
        value = self.latest
        if value == value and (value >= self.target if self.at_least else value <= self.target):
            sign = "≥" if self.at_least else "≤"
            self.reached = f"{self.metric} reached {value:.4g} (--stop-at {self.metric} {sign} {self.target:g})"

    def before_round(self, rnd: int) -> None:
        if self.reached is not None:
            raise BudgetExhausted(f"{self.reached}; stopping after round {rnd - 1}")

    def round_extras(self, rnd: int) -> Mapping[str, float]:
        return {}
