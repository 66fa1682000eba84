"""An in-memory data set: features, integer labels, optional groups and targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from potluck.core.errors import DataError


@dataclass(frozen=True)
class Dataset:
    """``x`` has one row per example (any trailing shape), ``y`` integer labels.

    ``groups`` holds a natural owner per example (a user, a site) when the source has
    one; ``source`` names where the data came from, for error messages.

    ``targets`` holds real-valued targets per example for tasks that are not
    classification (regression). Such tasks still give ``y`` integer values, used to
    stratify the held-out split and by label-skew partitions (a regression task puts
    the target's decile there).
    """

    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None
    source: str = "<memory>"
    targets: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise DataError(f"{self.source}: {len(self.x)} feature rows but {len(self.y)} labels")
        if self.groups is not None and len(self.groups) != len(self.y):
            raise DataError(f"{self.source}: {len(self.groups)} group values but {len(self.y)} labels")
        if self.targets is not None and len(self.targets) != len(self.y):
            raise DataError(f"{self.source}: {len(self.targets)} targets but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return int(self.y.max()) + 1 if len(self.y) else 0

    def subset(self, indices: np.ndarray, source: str | None = None) -> Dataset:
        return Dataset(
            self.x[indices],
            self.y[indices],
            None if self.groups is None else self.groups[indices],
            source or self.source,
            None if self.targets is None else self.targets[indices],
        )
