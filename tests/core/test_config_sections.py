"""Settings declared once: sections, their composition, TOML round trips, the resume rule."""

from __future__ import annotations

import dataclasses
import sys

import pytest

from potluck.core import sections
from potluck.core.config import NodeConfig, ServerConfig, SimulationConfig, check_resume
from potluck.core.errors import ConfigError, RunDirError
from potluck.core.protection_settings import ProtectionSection
from potluck.core.settings import Settings, resume_conflicts

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SECTIONS = [ProtectionSection] + [
    cls for cls in vars(sections).values()
    if isinstance(cls, type) and issubclass(cls, Settings) and cls is not Settings and dataclasses.is_dataclass(cls)
]
CONFIGS = [SimulationConfig, ServerConfig, NodeConfig]


def test_each_setting_is_declared_in_exactly_one_section():
    owners: dict[str, list[str]] = {}
    for cls in SECTIONS:
        for f in dataclasses.fields(cls):
            owners.setdefault(f.name, []).append(cls.__name__)
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
    for config in CONFIGS:  # a configuration only composes: it declares nothing of its own
        assert {f.name for f in dataclasses.fields(config)} <= set(owners)


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_declares_help_and_whether_a_resumed_run_may_change_it(cls):
    for f in dataclasses.fields(cls):
        assert isinstance(f.metadata.get("resumable"), bool), f.name
        assert f.metadata.get("help", "").strip(), f.name


def test_shared_settings_have_one_default():
    for name in ("min_nodes", "round_timeout", "rounds", "quorum", "max_retries", "task", "metrics_host"):
        assert getattr(SimulationConfig(), name) == getattr(ServerConfig(), name), name
    assert SimulationConfig().round_timeout == 600.0 and ServerConfig().min_nodes == 1
    node = NodeConfig("h:1", "a", "d.npz")
    assert (node.tls_dir, node.max_message_mb, node.chunk_mb) == (ServerConfig().tls_dir, 8.0, 2.0)


def test_node_config_takes_its_first_three_settings_by_position():
    node = NodeConfig("fl.example:7450", "site-a", "data.npz", task="mlp")
    assert (node.server_address, node.node_id, node.data_path, node.task) == ("fl.example:7450", "site-a",
                                                                               "data.npz", "mlp")
    with pytest.raises(ConfigError, match="data_path must be set"):
        NodeConfig("fl.example:7450", "site-a")


@pytest.mark.parametrize(("cls", "values"), [
    (SimulationConfig, {"nodes": 6, "min_nodes": 2, "round_timeout": 30.0, "dp": "local", "dp_clip": 0.5,
                        "run_dir": "runs/x", "fit": {"epochs": 2}, "strategy_options": {"server_lr": 0.1}}),
    (ServerConfig, {"bind": "0.0.0.0:7450", "allow": ["a", "b"], "max_payload_mb": 64.0, "dp": "central",
                    "dp_nodes": 9, "secagg": False, "metrics_port": 9400, "run_dir": "runs/s"}),
    (NodeConfig, {"server_address": "h:7450", "node_id": "a", "data_path": "a.npz", "no_bulk": True,
                  "key_dir": "keys", "max_backoff": 3.0}),
])
def test_toml_round_trip_of_every_configuration(tmp_path, cls, values):
    config = cls.from_mapping(values)
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    assert cls.load(path) == config
    assert cls.from_mapping(tomllib.loads(config.to_toml())) == config


def test_the_run_directory_config_reads_back_equal(tmp_path, small_config):
    from potluck.apps.simulate import run_simulation

    config = small_config(tmp_path, rounds=1, nodes=3, quorum=0.6, strategy_options={"server_lr": 0.5},
                          strategy="fedavgm", alpha=0.25)
    result = run_simulation(config)
    assert SimulationConfig.load(result.run_dir / "config.toml") == config


# -- one resume rule ---------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "changes", "refused"), [
    (SimulationConfig, {"rounds": 50, "round_timeout": 9.0, "workers": 2, "metrics_port": 1}, []),
    (SimulationConfig, {"seed": 1, "nodes": 4, "task": "mlp", "rounds": 50}, ["task", "seed", "nodes"]),
    (ServerConfig, {"rounds": 50, "bind": "0.0.0.0:1", "allow": ["a"], "wait_for_nodes": 5.0}, []),
    (ServerConfig, {"strategy": "fedadam", "dp": "local", "fit": {"epochs": 2}}, ["strategy", "fit", "dp"]),
])
def test_resume_conflicts_name_the_settings_that_may_not_change(cls, changes, refused):
    stored = cls()
    assert resume_conflicts(stored, stored.replace(**changes)) == refused


def test_check_resume_lists_what_changed_and_what_may(tmp_path):
    with pytest.raises(RunDirError) as info:
        check_resume(SimulationConfig(), SimulationConfig(alpha=0.3, rounds=5), tmp_path)
    message = str(info.value)
    assert f"{tmp_path} was started with other settings (alpha)" in message
    assert "rounds" in message.split("only ")[1] and "alpha" not in message.split("only ")[1]
    check_resume(SimulationConfig(), SimulationConfig(rounds=5), tmp_path)


def test_the_runtime_takes_its_round_and_federation_settings_from_the_sections():
    # apps build RoundPolicy and FederationSpec field by field from the configuration by
    # name: each of their fields must be a declared setting with the same default.
    from potluck.runtime.coordinator import RoundPolicy
    from potluck.runtime.federation import FederationSpec

    for runtime_cls, configs in [(RoundPolicy, [SimulationConfig, ServerConfig]), (FederationSpec, [SimulationConfig])]:
        for f in dataclasses.fields(runtime_cls):
            for config in configs:
                declared = {g.name: g for g in dataclasses.fields(config)}
                assert f.name in declared, f"{runtime_cls.__name__}.{f.name} is not a setting of {config.__name__}"
                assert getattr(config(), f.name) == (f.default_factory() if f.default is dataclasses.MISSING else f.default), f"{runtime_cls.__name__}.{f.name}: defaults differ"
