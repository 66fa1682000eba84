"""A task of your own that reports one more metric and is ranked by it.

The built-in regression task reports ``mse``, ``rmse`` and ``r2`` and is ranked by
``mse``. This one adds the mean absolute error and declares it the primary metric
(lower is better)::

    PYTHONPATH=examples potluck simulate --task mae_regression:MAERegression \\
        --data-path houses.csv --label-column price
"""

from __future__ import annotations

import numpy as np

from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import EvalOutput, MetricSpec
from potluck.tasks.regression import RegressionTask


class MAERegression(RegressionTask):
    metric = MetricSpec("mae", higher_is_better=False)

    def __init__(self) -> None:
        super().__init__("mae-regression", hidden=16, target_column="price")

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        out = super().evaluate(params, data)
        model = self._model
        assert model is not None  # super().evaluate built and loaded it
        x = np.asarray(data.x, dtype=np.float32)
        import torch

        with torch.no_grad():
            pred = model(torch.from_numpy(x).to(next(model.parameters()).device)).squeeze(1).double().cpu().numpy()
        mae = float(np.mean(np.abs(pred - np.asarray(data.targets, dtype=np.float64))))
        return EvalOutput(out.loss, out.num_examples, {**out.metrics, "mae": mae})
