"""Built-in tasks and the resolution of a task name (``digits`` or ``module:attribute``).

| name            | model                        | data                                   |
|-----------------|------------------------------|----------------------------------------|
| digits          | PyTorch MLP 64-64-10 (SGD, momentum 0.9, 5 local epochs) | scikit-learn's bundled 8×8 digits       |
| digits-sklearn  | scikit-learn SGDClassifier   | scikit-learn's bundled 8×8 digits       |
| mlp             | PyTorch MLP (hidden 128)     | ``--data-path`` (CSV, NPZ, IDX, images) |
| cnn             | PyTorch small CNN            | ``--data-path`` images (IDX, folders)   |
| charlm          | decoder-only transformer LM  | ``--data-path`` any UTF-8 text file     |
| regression      | PyTorch MLP or linear, MSE   | ``--data-path`` CSV, numeric target     |
| synthetic       | logistic regression (or MLP) | Synthetic(α, β), generated per node     |
| minilm-speaker  | pretrained MiniLM + LoRA     | ``--data-path`` a play: who says a line |

Factories take the CSV column names and the run's fit settings (``options``); charlm,
regression, synthetic and minilm-speaker read the settings that shape their data or model from them.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import ConfigError, DataError, TaskError
from potluck.core.imports import import_user_module
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.protocol import REQUIRED_MEMBERS, Task

DEFAULT_TASK = "digits"
Options = Mapping[str, object]


def load_digits(path: Path | None = None, **columns: str | None) -> Dataset:
    """scikit-learn's bundled 8×8 digits (1,797 examples), pixels scaled to [0, 1].

    Read straight from the file scikit-learn ships, without importing scikit-learn
    (which costs more than a second of start-up). A ``path`` loads any data instead.
    """
    if path is not None:
        from potluck.tasks.data.loaders import load_dataset

        return load_dataset(path, **columns)  # type: ignore[arg-type]
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the digits data set ships with scikit-learn: pip install scikit-learn")
    file = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not file.is_file():
        raise DataError(f"scikit-learn's digits file is missing: {file}")
    table = np.loadtxt(file, delimiter=",", dtype=np.float32)
    x = np.ascontiguousarray(table[:, :-1] / 16.0, dtype=np.float32)
    return Dataset(x, table[:, -1].astype(np.int64), source=str(file))


def _load_path(path: Path | None, *, task: str, **columns: str | None) -> Dataset:
    if path is None:
        raise DataError(f"the {task} task trains on your data: pass --data-path")
    from potluck.tasks.data.loaders import load_dataset

    return load_dataset(path, **columns)  # type: ignore[arg-type]


def _digits(options: Options, **columns: str | None) -> Task:
    from potluck.tasks.models import mlp
    from potluck.tasks.torch_task import FitSettings, TorchClassifierTask

    return TorchClassifierTask(
        "digits",
        partial(mlp, hidden=(64,)),
        partial(load_digits, **columns),
        defaults=FitSettings(lr=0.05, momentum=0.9, epochs=5, batch_size=32),
    )


def _digits_sklearn(options: Options, **columns: str | None) -> Task:
    from potluck.tasks.sklearn_task import SklearnLinearTask

    return SklearnLinearTask("digits-sklearn", partial(load_digits, **columns))


def _mlp(options: Options, **columns: str | None) -> Task:
    from potluck.tasks.models import mlp
    from potluck.tasks.torch_task import TorchClassifierTask

    return TorchClassifierTask("mlp", partial(mlp, hidden=(128,)), partial(_load_path, task="mlp", **columns))


def _cnn(options: Options, **columns: str | None) -> Task:
    from potluck.tasks.models import small_cnn
    from potluck.tasks.torch_task import FitSettings, TorchClassifierTask

    return TorchClassifierTask(
        "cnn", small_cnn, partial(_load_path, task="cnn", **columns), defaults=FitSettings(lr=0.05), num_threads=None
    )


def _charlm(options: Options, *, label_column: str, group_column: str | None) -> Task:
    from potluck.tasks.lm_task import CharLMTask

    return CharLMTask.from_options(options, group_pattern=group_column)


def _regression(options: Options, *, label_column: str, group_column: str | None) -> Task:
    from potluck.tasks.regression import RegressionTask

    return RegressionTask.from_options(options, target_column=label_column, group_column=group_column)


def _synthetic(options: Options, **columns: str | None) -> Task:
    from potluck.tasks.synthetic import SyntheticTask

    return SyntheticTask(options)


def _minilm_speaker(options: Options, *, label_column: str, group_column: str | None) -> Task:
    from potluck.tasks.minilm_task import MiniLMSpeakerTask

    return MiniLMSpeakerTask.from_options(options)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "digits": _digits,
    "digits-sklearn": _digits_sklearn,
    "mlp": _mlp,
    "cnn": _cnn,
    "charlm": _charlm,
    "regression": _regression,
    "synthetic": _synthetic,
    "minilm-speaker": _minilm_speaker,
}


def _columns_for(spec: str, obj: Any, is_task: bool, label_column: str, group_column: str | None) -> dict[str, Any]:
    """The columns a custom task's factory takes (``label_column=``, ``group_column=``).

    ConfigError when ``--label-column`` or ``--group-column`` was given but cannot reach
    the task: it is an instance, or its factory does not take that keyword."""
    given = {k: v for k, v in (("label_column", label_column), ("group_column", group_column))
             if v != {"label_column": "label", "group_column": None}[k]}
    if not given:
        return {}
    try:
        parameters = inspect.signature(obj).parameters if callable(obj) and not is_task else {}
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    missing = [k for k in given if k not in parameters and not takes_any]
    if missing:
        flag = "--" + missing[0].replace("_", "-")
        raise ConfigError(f"task {spec!r} loads its own data, so {flag} does not reach it: read the column in its "
                          f"load_data, or make {spec.partition(':')[2]!r} a function taking {missing[0]}=")
    return given


def resolve_task(
    spec: str, *, label_column: str = "label", group_column: str | None = None, options: Options | None = None
) -> Task:
    """A fresh Task for a built-in name or ``package.module:attribute``.

    ``label_column`` and ``group_column`` tell the built-in tasks' CSV reader which
    columns hold the label (the regression target) and the natural owner (for charlm, a
    regex naming each passage's owner); a custom Task loads its own data. ``options``
    are the run's fit settings: charlm and regression take their model's shape from them.

    The attribute may be a Task instance or a callable with no arguments returning one.
    Raises :class:`ConfigError` for a name that cannot be found (an unknown built-in, a
    module not on the path, a missing attribute) and :class:`TaskError` for a module that
    fails to import or an object that is not a Task.
    """
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec](dict(options or {}), label_column=label_column, group_column=group_column)
    if ":" not in spec:
        raise ConfigError(
            f"unknown task {spec!r}: use one of {', '.join(BUILTIN_TASKS)} or module:attribute"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = import_user_module(module_name)  # the current directory too, as for --strategy
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):  # the module's own import failed
            raise TaskError(f"task {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        raise ConfigError(f"task {spec!r}: cannot import module {module_name!r}: {exc} (looked in the current "
                          "directory and on PYTHONPATH)") from exc
    except ImportError as exc:
        raise TaskError(f"task {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"task {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc
    # A class has the Task attributes itself: call it, like any factory.
    is_task = all(hasattr(obj, m) for m in REQUIRED_MEMBERS) and not isinstance(obj, type)
    columns = _columns_for(spec, obj, is_task, label_column, group_column)
    task = obj if is_task else obj(**columns) if callable(obj) else obj
    missing = [m for m in REQUIRED_MEMBERS if not hasattr(task, m)]
    if missing:
        raise TaskError(f"task {spec!r} is not a Task: it lacks {', '.join(missing)}")
    return task  # type: ignore[no-any-return]
