"""SimulationConfig: types, ranges, TOML loading, flag overrides and the to_toml round trip."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.core.config import PARTITIONS, SimulationConfig
from potluck.core.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


FIELD_NAMES = [f.name for f in dataclasses.fields(SimulationConfig)]


def test_defaults_are_valid_and_documented_values():
    c = SimulationConfig()
    assert c.task == "digits" and c.nodes == 10 and c.strategy == "fedavg"
    assert c.partition in PARTITIONS
    assert c.data_path is None and c.run_dir is None
    assert SimulationConfig.from_mapping({}) == c


def test_from_mapping_sets_values_and_widens_ints_to_floats():
    c = SimulationConfig.from_mapping({"nodes": 4, "min_nodes": 2, "fraction": 1, "alpha": 2, "task": "mlp"})
    assert (c.nodes, c.min_nodes, c.task) == (4, 2, "mlp")
    assert c.fraction == 1.0 and isinstance(c.fraction, float)
    assert isinstance(c.alpha, float)


def test_default_tables_are_not_shared_between_instances():
    a, b = SimulationConfig(), SimulationConfig()
    assert a.fit is not b.fit and a.strategy_options is not b.strategy_options


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nodes": "10"}, "nodes must be an integer, got '10'"),
        ({"nodes": 10.0}, "nodes must be an integer, got 10.0"),
        ({"rounds": True}, "rounds must be an integer, got True"),
        ({"fraction": True}, "fraction must be a number, got True"),
        ({"fraction": "0.5"}, "fraction must be a number"),
        ({"task": 3}, "task must be a string, got 3"),
        ({"data_path": 3}, "data_path must be a string"),
        ({"fit": 3}, "fit must be a table, got 3"),
        ({"fit": "epochs=1"}, "fit must be a table"),
        ({"strategy_options": [1, 2]}, "strategy_options must be a table"),
        ({"fit": {"epochs": [1]}}, r"fit\.epochs must be a number, string or boolean"),
        ({"strategy_options": {"x": {"y": 1}}}, r"strategy_options\.x must be a number, string or boolean"),
    ],
)
def test_from_mapping_type_errors_name_the_setting(values, message):
    with pytest.raises(ConfigError, match=message):
        SimulationConfig.from_mapping(values, source="my.toml")
    with pytest.raises(ConfigError, match="^my.toml: "):
        SimulationConfig.from_mapping(values, source="my.toml")


def test_none_is_accepted_only_for_optional_fields():
    assert SimulationConfig.from_mapping({"data_path": None, "run_dir": None}).data_path is None
    with pytest.raises(ConfigError, match="nodes must be an integer, got None"):
        SimulationConfig.from_mapping({"nodes": None})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nodes", 0),
        ("rounds", 0),
        ("rounds", -3),
        ("fraction", 0.0),
        ("fraction", 1.5),
        ("fraction", float("nan")),
        ("min_nodes", 0),
        ("min_nodes", 11),  # more than nodes=10
        ("quorum", 0.0),
        ("quorum", 1.01),
        ("round_timeout", 0.0),
        ("round_timeout", -1.0),
        ("max_retries", -1),
        ("partition", "random"),
        ("alpha", 0.0),
        ("alpha", float("inf")),
        ("alpha", float("nan")),
        ("workers", -1),
        ("test_fraction", 1.0),
        ("test_fraction", -0.1),
        ("val_fraction", 1.0),
        ("val_fraction", -0.1),
        ("federated_eval_every", -1),
    ],
)
def test_range_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^cfg: {field} must be .*got {value!r}"):
        SimulationConfig.from_mapping({field: value}, source="cfg")
    with pytest.raises(ConfigError, match=rf"^{field} must be"):
        SimulationConfig(**{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [("fraction", 1.0), ("quorum", 1.0), ("min_nodes", 10), ("workers", 0), ("test_fraction", 0.0),
     ("max_retries", 0), ("federated_eval_every", 0)],
)
def test_range_boundaries_that_are_allowed(field, value):
    assert getattr(SimulationConfig.from_mapping({field: value}), field) == value


def test_partition_accepts_every_documented_scheme():
    for scheme in PARTITIONS:
        assert SimulationConfig(partition=scheme).partition == scheme


def test_min_nodes_is_checked_against_nodes_in_the_same_mapping():
    assert SimulationConfig.from_mapping({"nodes": 3, "min_nodes": 3}).min_nodes == 3
    with pytest.raises(ConfigError, match=r"min_nodes must be in \[1, nodes=3\], got 4"):
        SimulationConfig.from_mapping({"nodes": 3, "min_nodes": 4})


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as info:
        SimulationConfig.from_mapping({"nodez": 3, "rounds": 2}, source="run.toml")
    message = str(info.value)
    assert message.startswith("run.toml: unknown setting 'nodez'")
    for name in FIELD_NAMES:
        assert name in message


# -- files ------------------------------------------------------------------------------


CONFIG_TOML = """
task = "digits-sklearn"
nodes = 6
rounds = 3
fraction = 0.5
strategy = "fedprox"
partition = "iid"
seed = 11

[strategy_options]
proximal_mu = 0.01
name = "x"

[fit]
epochs = 2
lr = 0.1
optimizer = "adam"
"""


def test_load_reads_scalars_and_tables(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    c = SimulationConfig.load(path)
    assert (c.task, c.nodes, c.rounds, c.fraction, c.strategy, c.partition, c.seed) == (
        "digits-sklearn", 6, 3, 0.5, "fedprox", "iid", 11
    )
    assert c.strategy_options == {"proximal_mu": 0.01, "name": "x"}
    assert c.fit == {"epochs": 2, "lr": 0.1, "optimizer": "adam"}
    assert c.quorum == SimulationConfig().quorum  # not in the file: the default


def test_flag_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    c = SimulationConfig.load(path, overrides={"rounds": 9, "seed": 0, "fit": {"epochs": 1}})
    assert c.rounds == 9 and c.seed == 0
    assert c.fit == {"epochs": 1}  # a table from flags replaces the file's table
    assert c.nodes == 6  # not overridden: from the file


def test_override_errors_are_checked_too(tmp_path):
    path = tmp_path / "sim.toml"
    path.write_text(CONFIG_TOML, encoding="utf-8")
    with pytest.raises(ConfigError, match="nodes must be ≥ 1"):
        SimulationConfig.load(path, overrides={"nodes": 0, "min_nodes": 1})


def test_errors_in_a_file_name_the_file(tmp_path):
    path = tmp_path / "bad_value.toml"
    path.write_text("nodes = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: nodes must be ≥ 1"):
        SimulationConfig.load(path)
    path.write_text('rounds = "many"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: rounds must be an integer"):
        SimulationConfig.load(path)


def test_missing_file_is_a_config_error_naming_it(tmp_path):
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match=f"{path} does not exist"):
        SimulationConfig.load(path)


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        SimulationConfig.load(tmp_path)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("nodes = = 3\n[fit\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^{path}: invalid TOML"):
        SimulationConfig.load(path)


def test_replace_validates():
    c = SimulationConfig()
    assert c.replace(rounds=2).rounds == 2
    with pytest.raises(ConfigError, match="rounds"):
        c.replace(rounds=0)


# -- to_toml round trip --------------------------------------------------------------------


def reload(text: str) -> SimulationConfig:
    return SimulationConfig.from_mapping(tomllib.loads(text), source="round-trip")


def test_to_toml_of_defaults_reloads_equal_and_omits_none():
    c = SimulationConfig()
    text = c.to_toml()
    assert "data_path" not in text and "run_dir" not in text
    assert reload(text) == c


def test_to_toml_round_trip_with_tables_and_awkward_strings(tmp_path):
    c = SimulationConfig(
        task='my"tasks\\mod:make',
        data_path="C:\\data\\digits \"v2\".csv",
        run_dir="runs/é ü",
        nodes=7,
        min_nodes=7,
        fraction=0.3,
        round_timeout=1e-05,
        alpha=1e16,
        strategy_options={"server_lr": 0.5, "label": 'a "quoted" \\ value', "flag": False},
        fit={"epochs": 2, "lr": 1e-3, "optimizer": "adam", "nesterov": True},
    )
    text = c.to_toml()
    again = reload(text)
    assert again == c
    assert again.strategy_options["label"] == 'a "quoted" \\ value'
    assert type(again.fit["epochs"]) is int and type(again.fit["nesterov"]) is bool
    # And through a file, as a run directory stores it.
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    assert SimulationConfig.load(path) == c


# Strings a user can write in TOML (escapes included) must survive to_toml.
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
KEYS = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10)
SCALARS = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)


@settings(max_examples=150, deadline=None)
@given(
    task=TEXT,
    data_path=st.none() | TEXT,
    options=st.dictionaries(KEYS, SCALARS, max_size=4),
    fit=st.dictionaries(KEYS, SCALARS, max_size=4),
)
def test_to_toml_round_trip_for_any_strings(task, data_path, options, fit):
    c = SimulationConfig(task=task, data_path=data_path, strategy_options=options, fit=fit)
    assert reload(c.to_toml()) == c


@pytest.mark.parametrize("value", ["auto", "off", "0.0.0.0:7451", "[::]:0", "fl.example.org:65535"])
def test_server_bulk_lane_settings_accepted(value):
    from potluck.core.config import ServerConfig

    assert ServerConfig(bulk=value).bulk == value


@pytest.mark.parametrize("value", ["", "on", "7451", ":7451", "host:port", "host:65536", "host:-1"])
def test_server_bulk_lane_settings_refused_with_the_rule(value):
    from potluck.core.config import ServerConfig

    with pytest.raises(ConfigError, match="bulk must be auto, off or HOST:PORT"):
        ServerConfig(bulk=value)
