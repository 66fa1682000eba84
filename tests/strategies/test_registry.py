"""make_strategy, STRATEGIES and strategy_options: names, options and their validation."""

from __future__ import annotations

import inspect
import re

import pytest

from potluck.core.errors import ConfigError
from potluck.strategies import (
    STRATEGIES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
    make_strategy,
    strategy_options,
)
from potluck.strategies.presets import ROBUST_STRATEGIES

ALL = {"fedavg": FedAvg, "fedavgm": FedAvgM, "fedprox": FedProx,
       "fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad,
       **{cls.name: cls for cls in ROBUST_STRATEGIES}}  # options tested in test_robust.py


def test_registry_names() -> None:
    assert STRATEGIES == ALL
    for name, cls in STRATEGIES.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(ALL))
def test_defaults(name: str) -> None:
    strategy = make_strategy(name)
    assert isinstance(strategy, ALL[name]) and isinstance(strategy, Strategy)
    for option, default, description in strategy_options(name):
        assert strategy.settings[option] == default
        assert isinstance(default, float) and description
    assert make_strategy(name, {}).__dict__.keys() == strategy.__dict__.keys()


@pytest.mark.parametrize("name", sorted(ALL))
def test_constructor_defaults_match_the_option_table(name: str) -> None:
    params = inspect.signature(ALL[name]).parameters
    table = {option: default for option, default, _ in strategy_options(name)}
    assert {p: v.default for p, v in params.items()} == table


def test_expected_options() -> None:
    def names(s: str) -> list[str]:
        return [o for o, _, _ in strategy_options(s)]

    assert names("fedavg") == ["server_lr"]
    assert names("fedavgm") == ["server_lr", "momentum"]
    assert names("fedprox") == ["server_lr", "mu"]
    assert names("fedadam") == names("fedyogi") == ["server_lr", "beta1", "beta2", "tau"]
    assert names("fedadagrad") == ["server_lr", "beta1", "tau"]
    assert dict((o, d) for o, d, _ in strategy_options("fedadam")) == {
        "server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}
    assert dict((o, d) for o, d, _ in strategy_options("fedavgm"))["momentum"] == 0.9
    assert dict((o, d) for o, d, _ in strategy_options("fedprox"))["mu"] == 0.01


def test_options_are_applied_and_ints_accepted() -> None:
    s = make_strategy("fedadam", {"server_lr": 1, "beta1": 0, "beta2": 0.5, "tau": 0.1})
    assert s.settings == {"server_lr": 1.0, "beta1": 0.0, "beta2": 0.5, "tau": 0.1}
    assert isinstance(s.settings["server_lr"], float)
    assert make_strategy("fedprox", {"mu": 0}).fit_config(1) == {"proximal_mu": 0.0}
    assert make_strategy("fedavgm", {"momentum": 0.0}).settings["momentum"] == 0.0


def test_options_mapping_is_not_mutated() -> None:
    options = {"server_lr": 0.5}
    make_strategy("fedavgm", options)
    assert options == {"server_lr": 0.5}


def test_unknown_strategy_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedsgd")
    assert str(info.value) == (
        "unknown strategy 'fedsgd'; valid strategies: fedadagrad, fedadam, fedavg, fedavgm, fedprox, fedyogi, "
        "krum, median, multi-krum, norm-bound, trimmed-mean or module:attribute")
    with pytest.raises(ConfigError, match="unknown strategy"):
        strategy_options("FedAvg")


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedadam", {"lr": 0.1})
    assert str(info.value) == "strategy fedadam: unknown option 'lr'; valid options: beta1, beta2, server_lr, tau"
    with pytest.raises(ConfigError, match="unknown option 'beta2'; valid options: beta1, server_lr, tau"):
        make_strategy("fedadagrad", {"beta2": 0.9})
    with pytest.raises(ConfigError, match="unknown option 'mu'"):
        make_strategy("fedavg", {"mu": 0.1})


def test_exact_range_message() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("fedadam", {"beta1": 1.5})
    assert str(info.value) == "strategy fedadam: option beta1 must be in [0, 1), got 1.5"


@pytest.mark.parametrize("value", ["0.1", True, False, None, [0.1], 1 + 2j])
@pytest.mark.parametrize("name", sorted(ALL))
def test_wrong_type_is_rejected(name: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"strategy {name}: option server_lr must be a number, got"):
        make_strategy(name, {"server_lr": value})


BAD_VALUES = [
    ("fedavg", "server_lr", 0, "must be > 0"),
    ("fedavg", "server_lr", float("nan"), "must be finite"),
    ("fedavgm", "server_lr", -1, "must be > 0"),
    ("fedavgm", "momentum", 1.0, "must be in [0, 1)"),
    ("fedavgm", "momentum", -0.5, "must be in [0, 1)"),
    ("fedprox", "mu", -0.01, "must be >= 0"),
    ("fedprox", "mu", float("inf"), "must be finite"),
    ("fedprox", "server_lr", 0.0, "must be > 0"),
    ("fedadam", "beta1", 1.5, "must be in [0, 1)"),
    ("fedadam", "beta2", 1, "must be in [0, 1)"),
    ("fedadam", "tau", 0, "must be > 0"),
    ("fedadam", "server_lr", -0.1, "must be > 0"),
    ("fedyogi", "beta1", -0.1, "must be in [0, 1)"),
    ("fedyogi", "beta2", 2.0, "must be in [0, 1)"),
    ("fedyogi", "tau", -1e-3, "must be > 0"),
    ("fedyogi", "server_lr", float("-inf"), "must be finite"),
    ("fedadagrad", "beta1", 1.0, "must be in [0, 1)"),
    ("fedadagrad", "tau", 0.0, "must be > 0"),
    ("fedadagrad", "server_lr", 0, "must be > 0"),
]


@pytest.mark.parametrize(("name", "option", "value", "text"), BAD_VALUES)
def test_out_of_range_is_rejected(name: str, option: str, value: float, text: str) -> None:
    want = f"strategy {name}: option {option} {text}, got {value!r}"
    if text == "must be finite":
        want = f"strategy {name}: option {option} must be finite, got {value!r}"
    with pytest.raises(ConfigError, match=re.escape(want)):
        make_strategy(name, {option: value})


def test_descriptions_state_the_range() -> None:
    for name in ALL:
        for option, _, description in strategy_options(name):
            assert "must be" in description, (name, option)
