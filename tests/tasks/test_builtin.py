"""Built-in tasks: the digits loader, task resolution by name or module:attribute, the CNN."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import sklearn.datasets
import torch

from potluck.core.errors import ConfigError, DataError, TaskError
from potluck.tasks.builtin import BUILTIN_TASKS, DEFAULT_TASK, load_digits, resolve_task
from potluck.tasks.models import small_cnn
from potluck.tasks.protocol import DataInfo, Task
from potluck.tasks.sklearn_task import SklearnLinearTask
from potluck.tasks.torch_task import TorchClassifierTask


def test_load_digits_matches_sklearn():
    data = load_digits()
    oracle = sklearn.datasets.load_digits()
    assert data.x.shape == (1797, 64) and data.x.dtype == np.float32
    assert data.x.flags.c_contiguous
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    np.testing.assert_array_equal(data.x.astype(np.float64) * 16, oracle.data)
    np.testing.assert_array_equal(data.y, oracle.target)
    assert np.issubdtype(data.y.dtype, np.integer)
    assert sorted(np.unique(data.y).tolist()) == list(range(10))
    assert data.num_classes == 10
    assert data.source.endswith("digits.csv.gz")


def test_load_digits_with_a_path_loads_that_file(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 3)).astype(np.float32), np.arange(12) % 3
    path = tmp_path / "small.npz"
    np.savez(path, x=x, y=y)
    data = load_digits(path)
    assert len(data) == 12
    np.testing.assert_allclose(np.asarray(data.x, np.float32).reshape(12, -1), x)
    np.testing.assert_array_equal(data.y, y)


# -- resolve_task ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [("digits", TorchClassifierTask), ("digits-sklearn", SklearnLinearTask),
     ("mlp", TorchClassifierTask), ("cnn", TorchClassifierTask)],
)
def test_resolve_each_builtin(name, kind):
    task = resolve_task(name)
    assert isinstance(task, kind)
    assert isinstance(task, Task)
    assert task.name == name
    assert resolve_task(name) is not task  # a fresh Task each time


def test_builtin_table_and_default():
    assert set(BUILTIN_TASKS) == {"digits", "digits-sklearn", "mlp", "cnn", "charlm", "regression", "synthetic", "minilm-speaker"}
    assert DEFAULT_TASK in BUILTIN_TASKS


def test_digits_task_uses_documented_defaults():
    task = resolve_task("digits")
    assert (task.defaults.momentum, task.defaults.epochs, task.defaults.lr) == (0.9, 5, 0.05)


def test_unknown_name_lists_the_builtins():
    with pytest.raises(ConfigError) as info:
        resolve_task("digitz")
    message = str(info.value)
    assert "unknown task 'digitz'" in message
    for name in BUILTIN_TASKS:
        assert name in message
    assert "module:attribute" in message


TASK_MODULE = textwrap.dedent(
    '''
    from potluck.tasks.builtin import load_digits
    from potluck.tasks.sklearn_task import SklearnLinearTask

    instance = SklearnLinearTask("from-instance", load_digits)

    def factory():
        return SklearnLinearTask("from-factory", load_digits)

    class ClassTask:
        name = "from-class"

        def load_data(self, path):
            return load_digits(path)

        def build(self, info, seed):
            raise NotImplementedError

        def fit(self, params, data, config, seed):
            raise NotImplementedError

        def evaluate(self, params, data):
            raise NotImplementedError

    class Partial:
        name = "partial"

        def build(self, info, seed):
            return None

    partial_instance = Partial()
    not_a_task = 42

    def returns_junk():
        return "junk"
    '''
)


@pytest.fixture
def task_module(tmp_path, monkeypatch):
    (tmp_path / "potluck_test_user_tasks.py").write_text(TASK_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "potluck_test_user_tasks"


def test_module_attribute_holding_a_task_instance(task_module):
    import importlib

    task = resolve_task(f"{task_module}:instance")
    assert task is importlib.import_module(task_module).instance
    assert task.name == "from-instance"


def test_module_attribute_holding_a_factory(task_module):
    a = resolve_task(f"{task_module}:factory")
    b = resolve_task(f"{task_module}:factory")
    assert isinstance(a, SklearnLinearTask) and a.name == "from-factory"
    assert a is not b


def test_module_attribute_holding_a_task_class_gives_an_instance(task_module):
    # A class is "a callable with no arguments returning" a Task: call it.
    task = resolve_task(f"{task_module}:ClassTask")
    assert not isinstance(task, type)
    assert type(task).__name__ == "ClassTask"
    assert len(task.load_data(None)) == 1797  # a bound method: works without passing self


def test_missing_module_is_a_config_error(task_module):
    with pytest.raises(ConfigError, match="cannot import module 'potluck_no_such_module_xyz'"):
        resolve_task("potluck_no_such_module_xyz:task")


def test_a_module_whose_own_import_fails_is_a_task_error(tmp_path, monkeypatch):
    (tmp_path / "potluck_broken_task_xyz.py").write_text("import potluck_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TaskError, match="cannot import module 'potluck_broken_task_xyz'"):
        resolve_task("potluck_broken_task_xyz:task")


def test_missing_attribute_is_a_config_error(task_module):
    with pytest.raises(ConfigError, match=f"module '{task_module}' has no attribute 'nope'"):
        resolve_task(f"{task_module}:nope")


@pytest.mark.parametrize(
    ("attr", "lacks"),
    [
        ("partial_instance", "load_data, fit, evaluate"),
        ("Partial", "load_data, fit, evaluate"),
        ("not_a_task", "name, load_data, build, fit, evaluate"),
        ("returns_junk", "name, load_data, build, fit, evaluate"),
    ],
)
def test_object_lacking_methods_is_a_task_error_naming_them(task_module, attr, lacks):
    with pytest.raises(TaskError, match=f"task '{task_module}:{attr}' is not a Task: it lacks {lacks}$"):
        resolve_task(f"{task_module}:{attr}")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_path_tasks_need_a_data_path(name):
    with pytest.raises(DataError, match=f"the {name} task trains on your data: pass --data-path"):
        resolve_task(name).load_data(None)


def test_digits_task_needs_no_data_path():
    assert len(resolve_task("digits").load_data(None)) == 1797
    assert len(resolve_task("digits-sklearn").load_data(None)) == 1797


# -- models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(28, 28), (8, 8, 3), (7, 9), (4, 4, 1)])
def test_cnn_builds_for_images_and_gives_one_logit_per_class(shape):
    torch.manual_seed(0)
    model = small_cnn(DataInfo(shape, 10))
    out = model(torch.zeros((5, *shape)))
    assert out.shape == (5, 10)


def test_cnn_task_builds_and_trains_on_channels_last_images():
    rng = np.random.default_rng(0)
    from potluck.tasks.data.dataset import Dataset

    data = Dataset(rng.random((16, 8, 8, 3)).astype(np.float32), np.arange(16) % 4)
    task = resolve_task("cnn")
    p0 = task.build(DataInfo.from_dataset(data), 0)
    shapes = [shape for _, shape, _ in p0.schema]
    assert shapes[0] == (16, 3, 3, 3)  # 3 input channels, taken from the last axis
    assert shapes[-2:] == [(4, 32 * 2 * 2), (4,)]  # 8×8 pooled twice to 2×2, 4 classes
    out = task.fit(p0, data, {"epochs": 1, "batch_size": 8}, 0)
    assert out.params.schema == p0.schema and out.params != p0


@pytest.mark.parametrize("shape", [(3,), (64,), (2, 2), (3, 8, 8, 1)])
def test_cnn_rejects_shapes_it_cannot_take(shape):
    with pytest.raises(TaskError, match=r"cnn task needs images of shape \(H, W\) or \(H, W, C\)"):
        small_cnn(DataInfo(shape, 10))


def test_label_column_reaches_a_custom_factory_that_takes_it(tmp_path, monkeypatch):
    (tmp_path / "potluck_columns_task_xyz.py").write_text(
        "from functools import partial\n"
        "from potluck.tasks.data.loaders import load_dataset\n"
        "from potluck.tasks.torch_task import TorchClassifierTask\n"
        "from potluck.tasks.models import mlp\n"
        "def make(label_column='label'):\n"
        "    return TorchClassifierTask('cols', mlp, partial(load_dataset, label_column=label_column))\n"
        "task = make()\n")
    (tmp_path / "d.csv").write_text("a,y\n" + "\n".join(f"{i},{i % 2}" for i in range(10)) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = resolve_task("potluck_columns_task_xyz:make", label_column="y")
    assert list(task.load_data(tmp_path / "d.csv").y[:4]) == [0, 1, 0, 1]
    with pytest.raises(ConfigError, match="loads its own data, so --label-column does not reach it"):
        resolve_task("potluck_columns_task_xyz:task", label_column="y")
    with pytest.raises(ConfigError, match="--group-column does not reach it"):
        resolve_task("potluck_columns_task_xyz:make", group_column="site")
    assert resolve_task("potluck_columns_task_xyz:task").name == "cols"  # the defaults: nothing to pass
