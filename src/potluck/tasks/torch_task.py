"""PyTorch adapter: a classification Task around any ``nn.Module``.

``state_dict`` ↔ :class:`Params` is one to one (names and order kept). Training is a
standard mini-batch loop with a configurable optimizer, epochs and batch size, plus
FedProx's proximal term μ/2·‖w − w_global‖² when the strategy sends ``proximal_mu``.

Fit settings (from the run's ``[fit]`` table and the strategy), with defaults::

    optimizer     "sgd" | "adam"        sgd
    lr            learning rate > 0      0.05
    momentum      SGD momentum in [0,1)  0.0
    weight_decay  ≥ 0                    0.0
    epochs        local epochs ≥ 1       1
    batch_size    ≥ 1                    32
    proximal_mu   FedProx μ ≥ 0          0.0
    device        auto | cpu | cuda[:N]  auto   (see tasks/devices.py)
    amp           auto | off | bf16      auto   (bf16 autocast on CUDA only)

Its primary metric is ``accuracy`` (higher is better); ``loss`` is the mean cross-entropy.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from potluck.core.errors import ConfigError, NonFiniteError, TaskError
from potluck.core.messages import ConfigDict, Scalar
from potluck.core.params import Params
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.devices import amp_dtype, autocast, check_amp_name, check_device_name, resolve_device
from potluck.tasks.protocol import DataInfo, EvalOutput, FitOutput, MetricSpec
from potluck.tasks.settings import check_known, is_int, is_number, settings_over
from potluck.tasks.torch_optim import LocalAdam, LocalSGD

ModelFn = Callable[[DataInfo], nn.Module]
DataFn = Callable[[Path | None], Dataset]


@dataclass(frozen=True)
class FitSettings:
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    batch_size: int = 32
    proximal_mu: float = 0.0
    device: str = "auto"
    amp: str = "auto"

    @classmethod
    def from_config(cls, config: ConfigDict, defaults: FitSettings | None = None) -> FitSettings:
        """Settings from ``config`` over ``defaults``; unknown keys are left to others."""
        return settings_over(defaults or cls(), config)._validated()

    def _validated(self) -> FitSettings:
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"fit setting {name} must be {rule}, got {getattr(self, name)!r}")

        if self.optimizer not in ("sgd", "adam"):
            raise bad("optimizer", "'sgd' or 'adam'")
        check_device_name(self.device)
        check_amp_name(self.amp)
        for name in ("lr", "momentum", "weight_decay", "proximal_mu"):
            value = getattr(self, name)
            if not is_number(value):
                raise bad(name, "a finite number")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise bad(name, "an integer ≥ 1")
        if self.lr <= 0:
            raise bad("lr", "> 0")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "in [0, 1)")
        if self.weight_decay < 0 or self.proximal_mu < 0:
            raise bad("weight_decay" if self.weight_decay < 0 else "proximal_mu", "≥ 0")
        return self


def params_from_module(module: nn.Module) -> Params:
    """Copy a module's ``state_dict`` into :class:`Params` (names and order kept)."""
    return Params.from_arrays(
        {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}, copy=True
    )


def load_params_into(module: nn.Module, params: Params) -> None:
    """Copy ``params`` into ``module`` in place; raise ``SchemaMismatch`` if they differ."""
    state = module.state_dict()
    expected = tuple((k, tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items())
    params.check_schema(expected, what="parameters for the model")
    with torch.no_grad(), warnings.catch_warnings():
        # Params arrays are read-only; copy_ only reads them, so torch's warning is moot.
        warnings.simplefilter("ignore", UserWarning)
        for name, tensor in state.items():
            tensor.copy_(torch.from_numpy(params[name]))


ACCURACY = MetricSpec("accuracy", higher_is_better=True)


class TorchClassifierTask:
    """A :class:`~potluck.tasks.protocol.Task` for classification with PyTorch.

    ``model`` builds the network for a ``DataInfo``; ``data`` loads a Dataset from a
    path. ``defaults`` are the fit settings used where the run config says nothing.
    ``num_threads`` caps torch's intra-op threads (1 is fastest for small models and
    keeps results bit-identical across runs).

    >>> task = TorchClassifierTask("tiny", lambda info: nn.Linear(info.input_shape[0], info.num_classes),
    ...                            data=lambda path: load_dataset(path))  # doctest: +SKIP
    """

    metric = ACCURACY

    def __init__(
        self,
        name: str,
        model: ModelFn,
        data: DataFn,
        *,
        defaults: FitSettings | None = None,
        num_threads: int | None = 1,
    ) -> None:
        self.name = name
        self._model_fn = model
        self._data_fn = data
        self.defaults = (defaults or FitSettings())._validated()
        self._num_threads = num_threads
        self._model: nn.Module | None = None
        self._device_setting = self.defaults.device  # evaluate() computes where fit() last did

    def load_data(self, path: Path | None) -> Dataset:
        return self._data_fn(path)

    def check_fit_config(self, config: ConfigDict) -> None:
        """Raise ``ConfigError`` for unknown or invalid fit settings, before any round runs."""
        check_known(self.name, config, FitSettings.__dataclass_fields__)
        self._device_setting = FitSettings.from_config(config, self.defaults).device

    def build(self, info: DataInfo, seed: int) -> Params:
        if self._num_threads is not None:
            torch.set_num_threads(self._num_threads)
        torch.manual_seed(seed)
        self._model = self._model_fn(info)
        return params_from_module(self._model)

    def _ready_model(self, params: Params, device: torch.device) -> nn.Module:
        if self._model is None:
            raise TaskError(f"task {self.name}: build() must be called before fit/evaluate")
        self._model.to(device)
        load_params_into(self._model, params)
        return self._model

    def fit(self, params: Params, data: Dataset, config: ConfigDict, seed: int) -> FitOutput:
        settings = FitSettings.from_config(config, self.defaults)
        device = resolve_device(settings.device)
        self._device_setting = settings.device
        precision = amp_dtype(device, settings.amp)
        model = self._ready_model(params, device)
        model.train()
        x, y = _tensors(data, device)
        generator = torch.Generator().manual_seed(seed)
        optimizer = local_optimizer(model, settings)
        anchors = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else []
        loss_fn = nn.CrossEntropyLoss()
        total, steps = 0.0, 0
        for _ in range(settings.epochs):
            order = torch.randperm(len(y), generator=generator)
            for start in range(0, len(y), settings.batch_size):
                batch = order[start : start + settings.batch_size]
                optimizer.zero_grad()
                with autocast(device, precision):
                    loss = loss_fn(model(x[batch]), y[batch])
                if anchors:
                    prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchors))
                    loss = loss + 0.5 * settings.proximal_mu * prox
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                steps += 1
        mean_loss = total / max(steps, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteError(f"task {self.name}: training loss became {mean_loss} (lower the lr?)")
        return FitOutput(params_from_module(model), len(y), {"train_loss": mean_loss})

    def evaluate(self, params: Params, data: Dataset) -> EvalOutput:
        device = resolve_device(self._device_setting)
        model = self._ready_model(params, device)
        model.eval()
        x, y = _tensors(data, device)
        if len(y) == 0:
            raise TaskError(f"task {self.name}: cannot evaluate on an empty data set ({data.source})")
        loss_sum, correct = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(y), 4096):
                logits = model(x[start : start + 4096])
                target = y[start : start + 4096]
                loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
                correct += int((logits.argmax(dim=1) == target).sum())
        return EvalOutput(loss_sum / len(y), len(y), {"accuracy": correct / len(y)})


def _tensors(data: Dataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(data.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.y, dtype=np.int64))
    return x.to(device), y.to(device)


def local_optimizer(model: nn.Module, s: FitSettings) -> LocalSGD | LocalAdam:
    if s.optimizer == "adam":
        return LocalAdam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    return LocalSGD(model.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)


def fit_settings_keys() -> Mapping[str, Scalar]:
    """The fit settings this adapter understands, with their defaults."""
    return dict(FitSettings().__dict__)
