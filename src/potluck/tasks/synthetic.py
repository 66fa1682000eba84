"""The Synthetic(α, β) federated data set of Li et al. 2020 (FedProx), after Shamir et al.

Each virtual node ``k`` has its own model and input distribution, drawn from the run
seed and ``k`` alone, so a node's examples are generated when it is sampled and a
million nodes cost no memory until then::

    u_k ~ N(0, α)     W_k ~ N(u_k, 1)  (classes × features)     b_k ~ N(u_k, 1)
    B_k ~ N(0, β)     v_k ~ N(B_k, 1)  (features)
    x ~ N(v_k, Σ),  Σ diagonal, Σ_jj = j^(−1.2)
    y = argmax(softmax(W_k x + b_k)) = argmax(W_k x + b_k)

α controls how much the nodes' models differ, β how much their inputs do (the second
arguments of N are standard deviations, as in the paper's generator). A node holds
``min_examples + floor(lognormal(size_log_mean, size_log_sigma))`` examples, at most
``max_examples`` (the paper's code: lognormal(4, 2) + 50, uncapped; the cap keeps a
round's work bounded). The held-out set comes from a fixed set of nodes:
``test_per_node`` examples from each of the first ``min(nodes, test_nodes)`` nodes'
distributions, drawn from a stream of their own. Synthetic nodes keep no validation split.

Task options (``-F``, fixed for the run), with defaults::

    synthetic_alpha   α ≥ 0                          1.0
    synthetic_beta    β ≥ 0                          1.0
    features          input width ≥ 1                60
    classes           ≥ 2                            10
    max_examples      cap on a node's examples       1000
    straggler_fraction  fraction of fits that run fewer epochs (see below)   0.0
    drop_stragglers   a straggler's fit fails instead (see below)          false

The model is multinomial logistic regression in numpy (:class:`SyntheticTask`), no
PyTorch: a fit on a node's hundred examples is a few small matrix products. Fit
settings: lr (0.01), momentum (0), weight_decay (0), epochs (1), batch_size (10),
proximal_mu (0; FedProx sends it).

A straggler (chosen per fit from the fit's seed, with probability
``straggler_fraction``) trains a uniformly random number of epochs in 1 … epochs − 1,
as in the paper's experiments with systems heterogeneity; its partial work is kept
(FedProx), or with ``drop_stragglers`` (default false) the fit fails, so the round goes
on without it, as the paper's FedAvg drops stragglers (lower ``--quorum`` to match).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from potluck.core.errors import ConfigError, DataError, NonFiniteError, TaskError
from potluck.core.messages import ConfigDict
from potluck.core.params import Params
from potluck.core.seeds import rng_for
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput, MetricSpec
from potluck.tasks.settings import check_known, is_int, is_number, settings_over


@runtime_checkable
class VirtualNodeSource(Protocol):
    """A Task that generates each virtual node's data itself, from the run seed and the
    node's index, instead of loading one data set to partition (``runtime/federation.py``
    asks for a node's data only when the node is sampled)."""

    def data_info(self) -> DataInfo:
        """The shape of one example and the class count, known without generating data."""
        ...

    def node_data(self, seed: int, index: int) -> Dataset:
        """Node ``index``'s training examples; the same for the same (seed, index)."""
        ...

    def held_out_data(self, seed: int, nodes: int) -> Dataset:
        """The centralized evaluation set of a federation of ``nodes`` nodes."""
        ...


@dataclass(frozen=True)
class NodeModel:
    """Node k's hidden labelling model (``w``: classes × features, ``b``) and input mean ``v``."""

    w: np.ndarray
    b: np.ndarray
    v: np.ndarray
    size: int


@dataclass(frozen=True)
class Synthetic:
    """The generator; see the module docstring for the definition."""

    alpha: float = 1.0
    beta: float = 1.0
    features: int = 60
    classes: int = 10
    size_log_mean: float = 4.0
    size_log_sigma: float = 2.0
    min_examples: int = 50
    max_examples: int = 1000
    test_nodes: int = 100
    test_per_node: int = 50

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"synthetic data: {name} must be {rule}, got {getattr(self, name)!r}")

        for name in ("alpha", "beta", "size_log_mean", "size_log_sigma"):
            if not is_number(getattr(self, name)) or (name != "size_log_mean" and getattr(self, name) < 0):
                raise bad(name, "a finite number" + ("" if name == "size_log_mean" else " ≥ 0"))
        for name, low in (("features", 1), ("classes", 2), ("min_examples", 1), ("test_nodes", 1),
                          ("test_per_node", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise bad(name, f"an integer ≥ {low}")
        if not is_int(self.max_examples) or self.max_examples < self.min_examples:
            raise bad("max_examples", f"an integer ≥ min_examples ({self.min_examples})")

    @property
    def variances(self) -> np.ndarray:
        """Σ's diagonal: j^(−1.2) for j = 1 … features."""
        return np.arange(1, self.features + 1, dtype=np.float64) ** -1.2

    def node_model(self, seed: int, index: int, rng: np.random.Generator | None = None) -> NodeModel:
        """Node ``index``'s (W_k, b_k, v_k) and example count, from (seed, index) alone;
        drawn first from ``rng`` when given (the node's stream, whose examples follow)."""
        rng = rng_for(seed, "synthetic", index) if rng is None else rng
        u = rng.normal(0.0, self.alpha)
        w = rng.normal(u, 1.0, (self.classes, self.features))
        b = rng.normal(u, 1.0, self.classes)
        v = rng.normal(rng.normal(0.0, self.beta), 1.0, self.features)
        extra = rng.lognormal(self.size_log_mean, self.size_log_sigma)
        size = int(min(self.max_examples, self.min_examples + min(extra, self.max_examples)))
        return NodeModel(w, b, v, size)

    def examples(self, model: NodeModel, count: int, rng: np.random.Generator, source: str) -> Dataset:
        """``count`` examples x ~ N(v, Σ) (stored as float32), labelled by argmax(W x + b)
        computed on the stored values, so the labels are exact for the data as kept."""
        z = rng.standard_normal((count, self.features), dtype=np.float32)
        x = z * np.sqrt(self.variances, dtype=np.float32) + model.v.astype(np.float32)
        y = np.argmax(x.astype(np.float64) @ model.w.T + model.b, axis=1).astype(np.int64)
        return Dataset(x, y, source=source)

    def node_data(self, seed: int, index: int) -> Dataset:
        rng = rng_for(seed, "synthetic", index)  # one stream: the node's model, then its examples
        model = self.node_model(seed, index, rng)
        return self.examples(model, model.size, rng, f"synthetic node {index}")

    def held_out_data(self, seed: int, nodes: int) -> Dataset:
        parts = [self.examples(self.node_model(seed, k), self.test_per_node, rng_for(seed, "synthetic-test", k), "")
                 for k in range(min(nodes, self.test_nodes))]
        return Dataset(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]),
                       source=f"synthetic({self.alpha:g}, {self.beta:g}) held out")


# Task options (fit settings that fix the data for the run) → Synthetic fields.
DATA_OPTIONS = {"synthetic_alpha": "alpha", "synthetic_beta": "beta", "features": "features", "classes": "classes",
                "max_examples": "max_examples"}
TASK_OPTIONS = (*DATA_OPTIONS, "straggler_fraction", "drop_stragglers")


@dataclass(frozen=True)
class SGDSettings:
    """Local training of the synthetic task's model (the paper's: batch 10, lr 0.01)."""

    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 10
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lr", "momentum", "weight_decay", "proximal_mu"):
            value = getattr(self, name)
            if not is_number(value) or value < 0 or (name == "lr" and value == 0) or (name == "momentum" and value >= 1):
                rule = {"lr": "> 0", "momentum": "in [0, 1)"}.get(name, "≥ 0")
                raise ConfigError(f"task synthetic: fit setting {name} must be a number {rule}, got {value!r}")
        for name in ("epochs", "batch_size"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ConfigError(f"task synthetic: fit setting {name} must be an integer ≥ 1, "
                                  f"got {getattr(self, name)!r}")


class SyntheticTask:
    """Synthetic(α, β) with multinomial logistic regression, as in the paper, in numpy:
    local SGD (momentum and weight decay as ``torch.optim.SGD``) on the mean
    cross-entropy, plus FedProx's (μ/2)·‖w − w_global‖² when the strategy sends
    ``proximal_mu``. Parameters ``weight`` (classes × features) and ``bias``, float32.

    Raises ``ConfigError`` for an invalid option or fit setting."""

    name = "synthetic"
    metric = MetricSpec("accuracy", higher_is_better=True)

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        self.options = dict(options or {})
        self.data = Synthetic(**{f: self.options[k] for k, f in DATA_OPTIONS.items() if k in self.options})
        straggling = self.options.get("straggler_fraction", 0.0)
        if not is_number(straggling) or not 0 <= straggling <= 1:
            raise ConfigError(f"task synthetic: straggler_fraction must be in [0, 1], got {straggling!r}")
        self.straggler_fraction = float(straggling)
        self.drop_stragglers = self.options.get("drop_stragglers", False)
        if not isinstance(self.drop_stragglers, bool):
            raise ConfigError(f"task synthetic: drop_stragglers must be true or false, got {self.drop_stragglers!r}")
        self.settings = SGDSettings(**{k: v for k, v in self.options.items() if k in SGDSettings.__dataclass_fields__})

    def load_data(self, path: Path | None) -> Dataset:
        if path is None:
            raise DataError("the synthetic task generates each virtual node's data in simulation; "
                            "to train on a file, pass --data-path")
        from potluck.tasks.data.loaders import load_dataset

        return load_dataset(path)

    def data_info(self) -> DataInfo:
        return DataInfo((self.data.features,), self.data.classes)

    def node_data(self, seed: int, index: int) -> Dataset:
        return self.data.node_data(seed, index)

    def held_out_data(self, seed: int, nodes: int) -> Dataset:
        return self.data.held_out_data(seed, nodes)

    def check_fit_config(self, config: ConfigDict) -> None:
        """ConfigError for an unknown or invalid setting, or a task option this task was not made with."""
        check_known(self.name, config, [*SGDSettings.__dataclass_fields__, *TASK_OPTIONS])
        for key in TASK_OPTIONS:
            if key in config and config[key] != self.options.get(key, config[key]):
                raise ConfigError(f"task synthetic: {key}={config[key]!r} differs from the task's "
                                  f"{self.options[key]!r}")
        settings_over(self.settings, config)

    def build(self, info: DataInfo, seed: int) -> Params:
        """Weights uniform in ±1/√features (as ``torch.nn.Linear``), seeded."""
        if len(info.input_shape) != 1:
            raise TaskError(f"task synthetic: expected one row of features per example, got shape {info.input_shape}")
        bound = 1 / np.sqrt(info.input_shape[0])
        rng = np.random.default_rng(seed)
        w = rng.uniform(-bound, bound, (info.num_classes, info.input_shape[0]))
        return Params.from_arrays({"weight": w.astype(np.float32),
                                   "bias": rng.uniform(-bound, bound, info.num_classes).astype(np.float32)})

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        """Local SGD from ``params``; a straggler runs fewer epochs (module docstring)."""
        s = settings_over(self.settings, config)
        epochs = straggler_epochs(s.epochs, self.straggler_fraction, seed)
        if epochs < s.epochs and self.drop_stragglers:
            raise TaskError(f"task synthetic: a straggler ({epochs} of {s.epochs} epochs done) is dropped "
                            "(drop_stragglers: as FedAvg in Li et al. 2020)")
        w, b = params["weight"].astype(np.float64), params["bias"].astype(np.float64)
        w0, b0 = w.copy(), b.copy()
        vw, vb = np.zeros_like(w), np.zeros_like(b)
        x, y = data.x.astype(np.float64), data.y
        rng = np.random.default_rng(seed)
        total, steps = 0.0, 0
        for _ in range(epochs):
            order = rng.permutation(len(y))
            for start in range(0, len(y), s.batch_size):
                batch = order[start:start + s.batch_size]
                loss, gw, gb = cross_entropy_grad(w, b, x[batch], y[batch])
                if s.proximal_mu:
                    loss += 0.5 * s.proximal_mu * (np.sum((w - w0) ** 2) + np.sum((b - b0) ** 2))
                    gw, gb = gw + s.proximal_mu * (w - w0), gb + s.proximal_mu * (b - b0)
                if s.weight_decay:
                    gw, gb = gw + s.weight_decay * w, gb + s.weight_decay * b
                vw, vb = s.momentum * vw + gw, s.momentum * vb + gb  # torch's SGD: the first step's buffer is g
                w, b = w - s.lr * vw, b - s.lr * vb
                total, steps = total + loss, steps + 1
        mean_loss = total / max(steps, 1)
        if not np.isfinite(mean_loss) or not np.all(np.isfinite(w)):
            raise NonFiniteError(f"task synthetic: training loss became {mean_loss} (lower the lr?)")
        out = Params.from_arrays({"weight": w.astype(np.float32), "bias": b.astype(np.float32)})
        return FitOutput(out, len(y), {"train_loss": mean_loss, "epochs": float(epochs)})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        if len(data) == 0:
            raise TaskError(f"task synthetic: cannot evaluate on an empty data set ({data.source})")
        logits = data.x.astype(np.float64) @ params["weight"].T.astype(np.float64) + params["bias"]
        loss = float(np.mean(_logsumexp(logits) - logits[np.arange(len(data)), data.y]))
        return EvalOutput(loss, len(data), {"accuracy": float(np.mean(logits.argmax(axis=1) == data.y))})


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1)
    return np.asarray(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)))


def cross_entropy_grad(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean cross-entropy of softmax(x wᵀ + b) against ``y`` and its gradients in w and b."""
    logits = x @ w.T + b
    lse = _logsumexp(logits)
    p = np.exp(logits - lse[:, None])
    rows = np.arange(len(y))
    loss = float(np.mean(lse - logits[rows, y]))
    p[rows, y] -= 1.0
    p /= len(y)
    return loss, p.T @ x, p.sum(axis=0)


def straggler_epochs(epochs: int, fraction: float, seed: int) -> int:
    """``epochs``, or for a straggler (probability ``fraction``, drawn from ``seed``) a
    uniform draw from 1 … epochs − 1 (1 when epochs is 1)."""
    if fraction <= 0:
        return epochs
    rng = rng_for(seed, "straggler")
    if rng.random() < fraction:
        return int(rng.integers(1, max(epochs - 1, 1) + 1))
    return epochs
