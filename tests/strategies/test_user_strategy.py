"""``--strategy module:attribute``: the example of docs/strategies.md, imported from the current directory."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from potluck.core.errors import ConfigError
from potluck.core.params import Params, ParamsKind
from potluck.strategies import AdamStep, PlainStep, Strategy, make_strategy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"


def docs_example() -> str:
    """The ``# my_strategy.py`` python block of docs/strategies.md."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    (example,) = [b for b in blocks if b.startswith("# my_strategy.py")]
    return example


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory that is not on ``sys.path``; modules imported from it are forgotten."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def one_round(strategy: Strategy, x: Params, updates: list[Params], weights: list[float]) -> Params:
    agg = strategy.new_aggregator(x)
    for u, w in zip(updates, weights, strict=True):
        agg.add(u, w)
    return strategy.apply(x, agg.result())


X = Params.from_arrays({"w": np.array([1.0, 2.0], np.float32), "b": np.array([0.5], np.float32)})
UPDATES = [Params.from_arrays({"w": np.array(w, np.float32), "b": np.array([b], np.float32)}, ParamsKind.DELTA)
           for w, b in (([1.0, 0.0], 0.2), ([3.0, -2.0], 0.4), ([-1.0, 5.0], 0.0))]
WEIGHTS = [10.0, 1.0, 1.0]


def test_the_docs_example_runs_from_the_current_directory(workdir: Path) -> None:
    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    strategy = make_strategy("my_strategy:make", {"server_lr": 0.5})
    assert str(workdir) in sys.path  # found through the current directory, as python -m would
    assert strategy.name == "unweighted" and isinstance(strategy.step, PlainStep)
    got = one_round(strategy, X, UPDATES, WEIGHTS)
    mean = {k: np.mean([u[k].astype(np.float64) for u in UPDATES], axis=0) for k in X}  # the 10 examples don't count
    for k in X:
        np.testing.assert_allclose(got[k], X[k] + 0.5 * mean[k], rtol=1e-6)


def test_the_docs_example_with_another_server_step(workdir: Path) -> None:
    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    strategy = make_strategy("my_strategy:make", {"beta1": 0.5, "server_lr": 0.1}, server_opt="fedadam")
    assert strategy.name == "unweighted+fedadam" and isinstance(strategy.step, AdamStep)
    assert strategy.step.settings["server_lr"] == 0.1  # server_lr went to the new step, not to make()
    got = one_round(strategy, X, UPDATES, WEIGHTS)
    for k in X:
        d = np.mean([u[k].astype(np.float64) for u in UPDATES], axis=0)
        m, v = 0.5 * d, 0.99 * 1e-6 + 0.01 * d * d
        np.testing.assert_allclose(got[k], X[k] + 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)


def test_a_class_an_instance_and_a_subclass_are_strategies(workdir: Path) -> None:
    (workdir / "kinds.py").write_text(textwrap.dedent("""
        from potluck.strategies import FedAvg, MeanRule, PlainStep, Strategy

        class Told(Strategy):
            name = "told"
            def __init__(self, lr=1.0):
                super().__init__(MeanRule(), PlainStep(server_lr=lr))
            def fit_config(self, round):
                return {"round_told": round}

        SHARED = FedAvg(server_lr=0.25)
        NUMBER = 3
        def not_a_strategy():
            return {"fedavg": 1}
    """), encoding="utf-8")
    told = make_strategy("kinds:Told", {"lr": 0.5})
    assert told.fit_config(4) == {"round_told": 4} and told.settings == {"server_lr": 0.5}
    a, b = make_strategy("kinds:SHARED"), make_strategy("kinds:SHARED")
    assert a is not b and a.settings == {"server_lr": 0.25}  # each run gets its own copy
    with pytest.raises(ConfigError, match=r"^strategy 'kinds:SHARED' is a Strategy instance and takes no options"):
        make_strategy("kinds:SHARED", {"server_lr": 1.0})
    with pytest.raises(ConfigError, match=r"^strategy 'kinds:NUMBER' is not a Strategy: it gave a int"):
        make_strategy("kinds:NUMBER")
    with pytest.raises(ConfigError, match=r"^strategy 'kinds:not_a_strategy' is not a Strategy: it gave a dict"):
        make_strategy("kinds:not_a_strategy")
    with pytest.raises(ConfigError, match=r"^strategy 'kinds:Told' could not be made with options \{'mu': 1\}: .*'mu'"):
        make_strategy("kinds:Told", {"mu": 1})


def test_docs_error_messages_are_the_real_ones(workdir: Path) -> None:
    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    text = DOCS.read_text(encoding="utf-8")
    for spec in ("my_strategy:unweighted_mean", "my_strategy:np"):
        with pytest.raises(ConfigError) as info:
            make_strategy(spec)
        assert str(info.value) in text


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_here:make", "strategy 'no_such_module_here:make': cannot import module 'no_such_module_here'"),
    ("my_strategy:nothing", "strategy 'my_strategy:nothing': module 'my_strategy' has no attribute 'nothing'"),
    ("my_strategy:", "strategy 'my_strategy:': name a strategy as module:attribute"),
    ("fedsgd", "unknown strategy 'fedsgd'; valid strategies: fedadagrad"),
])
def test_names_that_are_not_strategies_are_config_errors(workdir: Path, spec: str, message: str) -> None:
    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_strategy(spec)


def test_a_server_step_option_with_a_user_strategy_is_checked(workdir: Path) -> None:
    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"with server step fedavgm: option momentum must be in \[0, 1\)"):
        make_strategy("my_strategy:make", {"momentum": 2.0}, server_opt="fedavgm")


def test_secure_aggregation_refuses_a_user_rule_that_must_see_each_update(workdir: Path) -> None:
    from potluck.apps.protections import protect_strategy
    from potluck.core.config import SimulationConfig

    (workdir / "my_strategy.py").write_text(docs_example(), encoding="utf-8")
    config = SimulationConfig(secagg=True, strategy="my_strategy:make")
    with pytest.raises(ConfigError, match="strategy unweighted, whose rule unweighted-mean must inspect every update"):
        protect_strategy(config, make_strategy(config.strategy))
    assert protect_strategy(config, make_strategy("fedavg", server_opt="fedadam")).name == "fedavg+fedadam"


def test_server_opt_setting_matches_the_strategies_steps():
    from potluck.core.sections import SERVER_OPTS as DECLARED
    from potluck.strategies import SERVER_OPTS

    assert tuple(DECLARED) == tuple(SERVER_OPTS)
