"""A Task in plain numpy: multinomial logistic regression, no PyTorch anywhere.

The whole protocol in one page: ``load_data`` (a seeded synthetic set, or an ``.npz``
with ``x`` and ``y``), ``build`` (zero weights), ``fit`` (minibatch SGD from the given
weights) and ``evaluate`` (cross-entropy and accuracy). Run it from a checkout's root::

    potluck simulate --task examples.numpy_task:NumpyLogReg --rounds 5 --nodes 4 -F lr=0.5
    python examples/numpy_task.py                      # the same through potluck.simulate

``-F`` settings: ``lr`` (> 0, default 0.5), ``epochs`` (≥ 1, default 1), ``batch_size``
(≥ 1, default 32). Others are refused before the run starts (``check_fit_config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from potluck import DataError, DataInfo, Dataset, EvalOutput, FitOutput, MetricSpec, Params, TaskError

DEFAULTS: dict[str, float] = {"lr": 0.5, "epochs": 1, "batch_size": 32}


def blobs(n: int = 600, features: int = 8, classes: int = 3, seed: int = 0) -> Dataset:
    """``classes`` Gaussian clusters in ``features`` dimensions, seeded."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(classes, features))
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(0.0, 1.5, size=(n, features))
    return Dataset(x.astype(np.float32), y.astype(np.int64), source=f"blobs(n={n}, seed={seed})")


class NumpyLogReg:
    """Softmax regression: ``p = softmax(x @ weight + bias)``."""

    name = "numpy-logreg"
    metric = MetricSpec("accuracy", higher_is_better=True)

    def load_data(self, path: Path | None) -> Dataset:
        if path is None:
            return blobs()
        try:
            with np.load(path) as npz:
                return Dataset(np.asarray(npz["x"], np.float32), np.asarray(npz["y"], np.int64), source=str(path))
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: need an .npz with arrays x and y ({exc})") from exc

    def build(self, info: DataInfo, seed: int) -> Params:
        if len(info.input_shape) != 1:
            raise TaskError(f"{self.name} takes flat feature rows, got examples of shape {info.input_shape}")
        (features,) = info.input_shape
        return Params.from_arrays({"weight": np.zeros((features, info.num_classes), np.float32),
                                   "bias": np.zeros(info.num_classes, np.float32)})

    def check_fit_config(self, config: Mapping[str, Any]) -> None:
        """Refuse unknown or out-of-range ``-F`` settings before any round runs."""
        unknown = sorted(set(config) - set(DEFAULTS))
        if unknown:
            raise TaskError(f"{self.name}: unknown fit setting {unknown[0]!r}; it takes {', '.join(DEFAULTS)}")
        for key, value in config.items():
            whole = key != "lr"  # epochs and batch_size count things
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            if not ok or (whole and value != int(value)):
                need = "a whole number ≥ 1" if whole else "a number > 0"
                raise TaskError(f"{self.name}: fit setting {key} must be {need}, got {value!r}")

    def fit(self, params: Params, data: Dataset, config: Mapping[str, Any], seed: int) -> FitOutput:
        lr = float(config.get("lr", DEFAULTS["lr"]))
        epochs, batch = int(config.get("epochs", 1)), int(config.get("batch_size", 32))
        w, b = params["weight"].copy(), params["bias"].copy()
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(epochs):
            order = rng.permutation(len(data))
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                probs = _softmax(data.x[idx] @ w + b)
                losses.append(_cross_entropy(probs, data.y[idx]))
                probs[np.arange(len(idx)), data.y[idx]] -= 1.0  # d loss / d logits
                w -= lr * (data.x[idx].T @ probs) / len(idx)
                b -= lr * probs.mean(axis=0)
        train_loss = float(np.mean(losses)) if losses else float("nan")
        return FitOutput(Params.from_arrays({"weight": w, "bias": b}), len(data), {"train_loss": train_loss})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        if len(data) == 0:
            return EvalOutput(float("nan"), 0, {"accuracy": float("nan")})
        probs = _softmax(data.x @ params["weight"] + params["bias"])
        accuracy = float(np.mean(probs.argmax(axis=1) == data.y))
        return EvalOutput(_cross_entropy(probs, data.y), len(data), {"accuracy": accuracy})


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(z / z.sum(axis=1, keepdims=True))


def _cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))


def main(rounds: int = 5, nodes: int = 4, run_dir: str | None = None) -> float:
    """Train through the Python API, halving ``lr`` after round 2; the held-out accuracy."""
    import potluck

    def schedule(record: potluck.RoundRecord, params: Params) -> potluck.RoundDecision | None:
        return potluck.RoundDecision(fit={"lr": 0.25}) if record.round == 2 else None

    module = "numpy_task" if __name__ == "__main__" else __name__  # run as a script: examples/ is on sys.path
    result = potluck.simulate(task=f"{module}:NumpyLogReg", rounds=rounds, nodes=nodes, fit={"lr": 0.5},
                              run_dir=run_dir, hooks=[schedule])
    last = result.records[-1]
    print(f"{len(result.records)} rounds, held-out accuracy {last.metrics['accuracy']:.3f}, loss {last.loss:.3f}; "
          f"run in {result.run_dir}")
    return last.metrics["accuracy"]


if __name__ == "__main__":
    main()
