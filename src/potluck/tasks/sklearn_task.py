"""scikit-learn adapter: linear classifiers as Tasks.

The parameters are the estimator's ``coef`` (classes × features) and ``intercept``
(classes); for two classes scikit-learn keeps one row, and so do we. Local training
continues from the given coefficients:

- ``SGDClassifier`` (default): ``partial_fit`` for ``epochs`` passes over the local
  data with every class declared, so nodes that lack some classes still train.
- ``LogisticRegression``: ``warm_start`` fit from the given coefficients. scikit-learn
  drops classes a node does not have, so each node must hold every class.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import TaskError
from potluck.core.messages import ConfigDict
from potluck.core.params import Params
from potluck.core.seeds import derive_seed
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput, MetricSpec
from potluck.tasks.settings import check_known

EstimatorFn = Callable[[int], Any]  # seed -> unfitted estimator


def _default_estimator(seed: int) -> Any:
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(loss="log_loss", alpha=1e-4, learning_rate="constant", eta0=0.05, random_state=seed % 2**32)  # sklearn takes 32-bit seeds


class SklearnLinearTask:
    """A Task wrapping a scikit-learn linear classifier (see the module docstring).

    Fit settings: ``epochs`` (passes of ``partial_fit``, SGDClassifier only; default 1).
    Its primary metric is ``accuracy`` (higher is better).
    """

    metric = MetricSpec("accuracy", higher_is_better=True)

    def __init__(
        self, name: str, data: Callable[[Path | None], Dataset], estimator: EstimatorFn | None = None
    ) -> None:
        self.name = name
        self._data_fn = data
        self._estimator_fn = estimator or _default_estimator
        self._info: DataInfo | None = None

    def load_data(self, path: Path | None) -> Dataset:
        return self._data_fn(path)

    def check_fit_config(self, config: ConfigDict) -> None:
        """Only ``epochs`` applies to this adapter; anything else is a ConfigError."""
        check_known(self.name, config, ["epochs"])

    def build(self, info: DataInfo, seed: int) -> Params:
        if info.num_classes < 2:
            raise TaskError(f"task {self.name}: a classifier needs at least 2 classes, data has {info.num_classes}")
        self._info = info
        rows = 1 if info.num_classes == 2 else info.num_classes
        features = math.prod(info.input_shape)
        return Params.from_arrays(
            {"coef": np.zeros((rows, features)), "intercept": np.zeros(rows)}, copy=False
        )

    def _estimator(self, params: Params, seed: int) -> Any:
        if self._info is None:
            raise TaskError(f"task {self.name}: build() must be called before fit/evaluate")
        est = self._estimator_fn(seed)
        est.coef_ = np.array(params["coef"], dtype=np.float64)
        est.intercept_ = np.array(params["intercept"], dtype=np.float64)
        est.classes_ = np.arange(self._info.num_classes)
        return est

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        est = self._estimator(params, seed)
        x, y = _flat(data), data.y
        epochs = config.get("epochs", 1)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise TaskError(f"task {self.name}: fit setting epochs must be an integer ≥ 1, got {epochs!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on tiny local sets
            if hasattr(est, "partial_fit"):
                for _ in range(epochs):
                    est.partial_fit(x, y, classes=est.classes_)
            else:
                missing = sorted(set(est.classes_.tolist()) - set(np.unique(y).tolist()))
                if missing:
                    raise TaskError(f"task {self.name}: {type(est).__name__} needs every class; "
                                    f"this node lacks {missing}")
                est.set_params(warm_start=True)
                est.fit(x, y)
        out = Params.from_arrays(
            {"coef": est.coef_.astype(params["coef"].dtype), "intercept": est.intercept_.astype(params["intercept"].dtype)}
        )
        return FitOutput(out, len(y), {})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        if len(data) == 0:
            raise TaskError(f"task {self.name}: cannot evaluate on an empty data set ({data.source})")
        est = self._estimator(params, derive_seed(0, "eval"))
        scores = np.atleast_2d(est.decision_function(_flat(data)))
        if scores.shape[0] != len(data):  # binary: one score per example
            scores = scores.T
        if scores.shape[1] == 1:
            scores = np.hstack([-scores / 2, scores / 2])
        scores = scores - scores.max(axis=1, keepdims=True)
        log_probs = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
        loss = float(-log_probs[np.arange(len(data)), data.y].mean())
        accuracy = float((scores.argmax(axis=1) == data.y).mean())
        return EvalOutput(loss, len(data), {"accuracy": accuracy})


def _flat(data: Dataset) -> np.ndarray:
    return np.asarray(data.x, dtype=np.float64).reshape(len(data), -1)
