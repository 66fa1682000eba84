"""A strategy of your own: the coordinate-wise clipped mean, streaming in O(model) memory.

Each coordinate of each node's update is clipped to ``[-clip, clip]`` before the
example-weighted mean, so no node can move any one weight by more than ``clip`` in a
round, however large its update (a robust rule that, unlike the median, keeps the
mean's O(model) memory). The server step is the plain ``x + server_lr·Δ``. Run it from a
checkout's root::

    potluck simulate --task examples.numpy_task:NumpyLogReg \\
        --strategy examples.custom_strategy:ClippedFedAvg -S clip=0.05 --rounds 5 --nodes 4
    python examples/custom_strategy.py                  # the same through potluck.simulate

The three parts: a streaming :class:`~potluck.Aggregator` (``count``, ``add``,
``result``), an :class:`~potluck.AggregationRule` that declares its options and makes
one aggregator per round, and a :class:`~potluck.Strategy` pairing the rule with a step.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from potluck import AggregationRule, Aggregator, Option, Params, ParamsKind, PlainStep, Strategy, WeightedMean
from potluck.strategies.options import POSITIVE


class ClippedMeanAggregator:
    """Clips each float coordinate to ``[-clip, clip]``, then folds into a WeightedMean
    (which checks the schema, NaN/Inf and the weight, and streams)."""

    def __init__(self, clip: float, schema: tuple[tuple[str, tuple[int, ...], str], ...]) -> None:
        self.clip = clip
        self.mean = WeightedMean(schema=schema)

    @property
    def count(self) -> int:
        return self.mean.count

    def add(self, update: Params, weight: float) -> None:
        clipped = {name: np.clip(a, -self.clip, self.clip) if a.dtype.kind == "f" else a for name, a in update.items()}
        self.mean.add(Params.from_arrays(clipped, ParamsKind.DELTA, copy=False), weight)

    def result(self) -> Params:
        return self.mean.result()


class ClippedMean(AggregationRule):
    """Coordinate-wise clipping at ``clip``, then the example-weighted mean."""

    name: ClassVar[str] = "clipped-mean"
    options: ClassVar[tuple[Option, ...]] = (
        Option("clip", 0.1, POSITIVE, "largest change one update may make to one coordinate"),
    )

    def __init__(self, *, clip: float = 0.1) -> None:
        super().__init__(clip=clip)  # checked: ConfigError for clip <= 0, NaN, a string
        self.clip = self.settings["clip"]

    def new_aggregator(self, global_params: Params) -> Aggregator:
        return ClippedMeanAggregator(self.clip, global_params.schema)


class ClippedFedAvg(Strategy):
    """The clipped mean with the plain server step; ``-S clip=… -S server_lr=…``."""

    def __init__(self, clip: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(ClippedMean(clip=clip), PlainStep(server_lr=server_lr), name="clipped-fedavg")


def main(rounds: int = 5, nodes: int = 4, clip: float = 0.05, run_dir: str | None = None) -> float:
    """Train the numpy example task with this strategy; the held-out accuracy."""
    import potluck

    module = "custom_strategy" if __name__ == "__main__" else __name__  # as a script, examples/ is on sys.path
    task = "numpy_task:NumpyLogReg" if __name__ == "__main__" else "examples.numpy_task:NumpyLogReg"
    result = potluck.simulate(task=task, strategy=f"{module}:ClippedFedAvg", strategy_options={"clip": clip},
                              rounds=rounds, nodes=nodes, run_dir=run_dir)
    last = result.records[-1]
    print(f"clipped-fedavg (clip {clip}): held-out accuracy {last.metrics['accuracy']:.3f} after {rounds} rounds; "
          f"run in {result.run_dir}")
    return last.metrics["accuracy"]


if __name__ == "__main__":
    main()
