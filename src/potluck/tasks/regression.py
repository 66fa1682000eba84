"""The ``regression`` task: predict a numeric CSV column with a PyTorch MLP (or linear model).

``--data-path data.csv --label-column TARGET``: a header row; the target column holds
real numbers, every other column (but ``--group-column``) is a numeric feature. The
model is linear (``-F hidden=0``) or one hidden ReLU layer of ``hidden`` units (default
32); ``hidden`` shapes the model, so it is fixed when the task is made. Fit settings are
the PyTorch adapter's (``optimizer``, ``lr``, ``epochs``, ``batch_size``, ``device``...;
see tasks/torch_task.py), with Adam at lr 0.01 for 5 epochs by default.

Metrics: ``loss`` and ``mse`` are the mean squared error in the target's units squared
(``mse`` is the primary metric, lower is better), ``rmse`` its square root, ``r2`` the
coefficient of determination on the evaluated examples. ``y`` holds the target's decile
(0–9, cut at the whole file's quantiles): the held-out split is stratified by it, and
``--partition dirichlet`` or ``shards`` skew the target's range across nodes.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from potluck.core.errors import ConfigError, DataError, NonFiniteError, TaskError
from potluck.core.messages import ConfigDict
from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.data.loaders import csv_columns
from potluck.tasks.devices import amp_dtype, autocast, resolve_device
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput, MetricSpec
from potluck.tasks.settings import check_known, is_int
from potluck.tasks.torch_task import FitSettings, load_params_into, local_optimizer, params_from_module

MSE = MetricSpec("mse", higher_is_better=False)
DEFAULTS = FitSettings(optimizer="adam", lr=0.01, epochs=5, batch_size=32)
BINS = 10


def read_regression_csv(path: Path | None, target_column: str, group_column: str | None = None) -> Dataset:
    """Features (float32), the target (``targets``, float64), its decile (``y``) and groups."""
    if path is None:
        raise DataError("the regression task trains on your CSV: pass --data-path FILE --label-column TARGET")
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            header, rows = _rows(p, csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{p}: cannot read as a CSV file ({exc})") from None
    t_at, g_at, feature_at = csv_columns(p, header, target_column, group_column, kind="target")
    values = np.empty((len(rows), len(header)), dtype=np.float64)
    for r, (line, fields) in enumerate(rows):
        for i in [*feature_at, t_at]:
            try:
                values[r, i] = float(fields[i])
            except ValueError:
                raise DataError(f"{p} line {line}: column {header[i]!r} value {fields[i]!r} is not a number") from None
    if not np.isfinite(values[:, [*feature_at, t_at]]).all():
        raise DataError(f"{p}: NaN or infinite values; every feature and target must be a finite number")
    target = values[:, t_at]
    groups = np.array([fields[g_at].strip() for _, fields in rows]) if g_at >= 0 else None
    return Dataset(values[:, feature_at].astype(np.float32), target_deciles(target), groups, str(p), target)


def _rows(p: Path, reader: Any) -> tuple[list[str], list[tuple[int, list[str]]]]:
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError(f"{p}: empty file; expected a header row and data rows")
    rows = []
    for fields in reader:
        if not fields:
            continue
        if len(fields) != len(header):
            raise DataError(f"{p} line {reader.line_num}: {len(fields)} fields, header has {len(header)}")
        rows.append((reader.line_num, fields))
    if len(rows) < 2:
        raise DataError(f"{p}: {len(rows)} data row(s); need at least 2")
    return header, rows


def target_deciles(target: np.ndarray) -> np.ndarray:
    """Each value's decile (0..9) among ``target``'s quantiles; equal values share one."""
    edges = np.quantile(target, np.linspace(0, 1, BINS + 1)[1:-1])
    return np.searchsorted(edges, target, side="right").astype(np.int64)


class RegressionTask:
    """Regression with PyTorch on a CSV with a numeric target (see the module docstring)."""

    metric = MSE

    def __init__(self, name: str = "regression", *, hidden: int = 32, target_column: str = "label",
                 group_column: str | None = None, defaults: FitSettings | None = None) -> None:
        if not is_int(hidden) or hidden < 0:
            raise ConfigError(f"regression setting hidden must be an integer ≥ 0 (0: linear), got {hidden!r}")
        self.name = name
        self.hidden = hidden
        self.target_column, self.group_column = target_column, group_column
        self.defaults = (defaults or DEFAULTS)._validated()
        self._model: nn.Module | None = None
        self._device_setting = self.defaults.device

    @classmethod
    def from_options(cls, options: Mapping[str, Any], *, target_column: str = "label",
                     group_column: str | None = None) -> RegressionTask:
        return cls(hidden=options.get("hidden", 32), target_column=target_column, group_column=group_column)

    def load_data(self, path: Path | None) -> Dataset:
        return read_regression_csv(path, self.target_column, self.group_column)

    def check_fit_config(self, config: ConfigDict) -> None:
        """ConfigError for an unknown or invalid setting, or a ``hidden`` the model was not made with."""
        check_known(self.name, config, sorted({*FitSettings.__dataclass_fields__, "hidden"}))
        if config.get("hidden", self.hidden) != self.hidden:
            raise ConfigError(f"task {self.name}: hidden={config['hidden']!r} shapes the model, made with hidden={self.hidden}")
        self._device_setting = FitSettings.from_config(config, self.defaults).device

    def build(self, info: DataInfo, seed: int) -> Params:
        if len(info.input_shape) != 1:
            raise TaskError(f"task {self.name}: expected one row of features per example, got shape {info.input_shape}")
        torch.manual_seed(seed)
        width = info.input_shape[0]
        layers = [nn.Linear(width, 1)] if self.hidden == 0 else [nn.Linear(width, self.hidden), nn.ReLU(), nn.Linear(self.hidden, 1)]
        self._model = nn.Sequential(*layers)
        return params_from_module(self._model)

    def _ready(self, params: Params, data: Dataset, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
        if self._model is None:
            raise TaskError(f"task {self.name}: build() must be called before fit/evaluate")
        if data.targets is None:
            raise TaskError(f"task {self.name}: {data.source} has no numeric targets (load it with this task)")
        self._model.to(device)
        load_params_into(self._model, params)
        x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32)).to(device)
        t = torch.from_numpy(np.ascontiguousarray(data.targets, dtype=np.float32)).to(device)
        return self._model, x, t

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        settings = FitSettings.from_config(config, self.defaults)
        device = resolve_device(settings.device)
        self._device_setting = settings.device
        precision = amp_dtype(device, settings.amp)
        model, x, t = self._ready(params, data, device)
        model.train()
        optimizer = local_optimizer(model, settings)
        generator = torch.Generator().manual_seed(seed)
        anchors = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else []
        total, steps = 0.0, 0
        for _ in range(settings.epochs):
            order = torch.randperm(len(t), generator=generator).to(device)
            for start in range(0, len(t), settings.batch_size):
                batch = order[start:start + settings.batch_size]
                optimizer.zero_grad()
                with autocast(device, precision):
                    pred = model(x[batch]).squeeze(1)
                loss = nn.functional.mse_loss(pred.float(), t[batch])
                if anchors:
                    loss = loss + 0.5 * settings.proximal_mu * sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
                loss.backward()
                optimizer.step()
                total, steps = total + float(loss.detach()), steps + 1
        mean_loss = total / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteError(f"task {self.name}: training loss became {mean_loss} (lower the lr, or scale the target)")
        return FitOutput(params_from_module(model), len(t), {"train_loss": mean_loss})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        model, x, t = self._ready(params, data, resolve_device(self._device_setting))
        if len(t) == 0:
            raise TaskError(f"task {self.name}: cannot evaluate on an empty data set ({data.source})")
        model.eval()
        with torch.no_grad():
            err = (model(x).squeeze(1).double() - t.double()).cpu().numpy()
        target = np.asarray(data.targets, dtype=np.float64)
        mse = float(np.mean(err**2))
        spread = float(np.mean((target - target.mean()) ** 2))
        r2 = 1.0 - mse / spread if spread > 0 else math.nan
        return EvalOutput(mse, len(t), {"mse": mse, "rmse": math.sqrt(mse), "r2": r2})
