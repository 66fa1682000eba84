"""Options made from the settings declarations: every setting is a flag with its help
text and default in ``--help``, settable in TOML, and flags win over the file."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.cli.options import flag_of, shown_default
from potluck.core.config import NodeConfig, ServerConfig, SimulationConfig

runner = CliRunner()
COMMANDS = [("simulate", SimulationConfig), ("server", ServerConfig), ("node", NodeConfig)]


def flat(text: str) -> str:
    """``--help`` as one line: the table's borders gone, wrapped lines joined."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def help_of(command: str) -> str:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    return flat(result.output)


@pytest.mark.parametrize(("command", "cls"), COMMANDS)
def test_every_setting_is_an_option_with_its_help_and_default(command, cls):
    text = help_of(command)
    for f in fields(cls):
        help_text = f.metadata["help"]
        assert help_text.strip(), f"{f.name} has no help text"
        entry = flat(f"{help_text} [default: {shown_default(f)}]")
        assert re.search(rf"{re.escape(flag_of(f))}\b", text), f"{flag_of(f)} missing from `{command} --help`"
        assert entry in text, f"{f.name}: {entry!r} missing from `{command} --help`"
        assert text.index(flag_of(f)) < text.index(entry)


def test_up_offers_the_settings_it_passes_on_with_its_own_node_count():
    from potluck.cli.up import UP_SETTINGS

    text = help_of("up")
    for f in fields(SimulationConfig):
        if f.name in UP_SETTINGS:
            assert flat(f"{f.metadata['help']} [default: {shown_default(f, {'nodes': 3})}]") in text, f.name
        else:
            assert not re.search(rf"{re.escape(flag_of(f))}\b", text), f"up offers {flag_of(f)}, which it ignores"
    assert "Number of virtual nodes. [default: 3]" in text


def test_up_refuses_a_toml_setting_it_would_ignore(tmp_path):
    toml = tmp_path / "up.toml"
    toml.write_text("workers = 4\n")
    result = runner.invoke(app, ["up", "--config", str(toml)])
    assert result.exit_code == 2 and "workers is not a setting of this command" in result.output, result.output


@pytest.mark.parametrize("command", ["simulate", "server"])
def test_round_defaults_are_the_same_for_simulate_and_server(command):
    # They drifted once (min_nodes 1 vs 2, round_timeout 600 vs 120); now one declaration.
    text = help_of(command)
    assert "Round deadline, seconds. [default: 600.0]" in text
    assert "before it starts. [default: 1]" in text
    assert "Rounds to run. [default: 30]" in text


def test_server_has_every_documented_transport_flag():
    text = help_of("server")
    for flag, default in [("--max-payload-mb", "2048.0"), ("--max-message-mb", "8.0"), ("--chunk-mb", "2.0"),
                          ("--wait-for-nodes", "600.0"), ("--heartbeat-seconds", "2.0"), ("--bulk", "auto")]:
        assert re.search(rf"{flag} .*?\[default: {re.escape(default)}\]", text), flag


@pytest.fixture
def captured(monkeypatch):
    """Stops `server` and `node` before they start, keeping the configuration they were given."""
    import potluck.apps.node
    import potluck.apps.server

    seen: dict = {}

    def fake_server(config, **_):
        seen["config"] = config
        raise KeyboardInterrupt

    class FakeAgent:
        def __init__(self, config):
            seen["config"] = config
            self.client, self.run_id, self.rounds_done = self, None, 0

        def run(self):
            return 0

        def stop(self):
            return None

        def close(self):
            return None

    monkeypatch.setattr(potluck.apps.server, "run_server", fake_server)
    monkeypatch.setattr(potluck.apps.node, "NodeAgent", FakeAgent)
    return seen


def test_server_settings_come_from_toml_and_flags_win(tmp_path, captured):
    toml = tmp_path / "server.toml"
    toml.write_text('rounds = 12\nmin_nodes = 3\nmax_payload_mb = 64\nallow = ["a", "b"]\n[fit]\nepochs = 3\n')
    result = runner.invoke(app, ["server", "--config", str(toml), "--rounds", "5", "--allow", "c",
                                 "--max-payload-mb", "32", "-F", "lr=0.5", "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.rounds, config.min_nodes, config.max_payload_mb) == (5, 3, 32.0)
    assert config.allow == ["c"] and config.fit == {"lr": 0.5}  # a list or table from flags replaces the file's
    assert config.run_dir == str(tmp_path / "r") and config.round_timeout == 600.0


def test_server_without_run_dir_uses_runs_server(captured):
    result = runner.invoke(app, ["server"])
    assert result.exit_code == 0, result.output
    assert captured["config"].run_dir == "runs/server"


def test_node_settings_come_from_toml_and_flags_win(tmp_path, captured):
    toml = tmp_path / "node.toml"
    toml.write_text('server_address = "fl.example:7450"\nnode_id = "site-a"\ndata_path = "a.npz"\n'
                    'max_backoff = 5\nval_fraction = 0.2\n')
    result = runner.invoke(app, ["node", "--config", str(toml), "--node-id", "site-b", "--no-bulk",
                                 "--poll-seconds", "1.5"])
    assert result.exit_code == 0, result.output
    config = captured["config"]
    assert (config.server_address, config.node_id, config.data_path) == ("fl.example:7450", "site-b", "a.npz")
    assert (config.max_backoff, config.val_fraction, config.poll_seconds, config.no_bulk) == (5.0, 0.2, 1.5, True)


@pytest.mark.parametrize(("args", "message"), [
    (["--node-id", "a", "--data-path", "x.npz"], "server_address must be set"),
    (["--server-address", "h:1", "--node-id", "a"], "data_path must be set"),
    (["--server-address", "h:1", "--node-id", "a", "--data-path", "x", "--max-backoff", "0"], "max_backoff must be"),
])
def test_node_refuses_missing_or_bad_settings_in_one_line(args, message, captured):
    result = runner.invoke(app, ["node", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "config" not in captured


def test_a_switch_turns_a_setting_on_and_bad_values_name_the_flag_setting(captured):
    result = runner.invoke(app, ["server", "--insecure", "--dp", "central", "--dp-adaptive-clip", "--min-nodes", "2"])
    assert result.exit_code == 0, result.output
    assert captured["config"].insecure and captured["config"].dp_adaptive_clip
    result = runner.invoke(app, ["server", "--bulk", "sideways"])
    assert result.exit_code == 2 and "bulk must be auto, off or HOST:PORT" in result.output


@pytest.mark.parametrize("values", [
    {"run_dir": "r"},
    {"run_dir": "r", "rounds": 7, "insecure": True, "allow": ["a", "b c"], "fit": {"optimizer": "adam", "lr": 0.5},
     "strategy_options": {"server_lr": 0.01, "nesterov": True}, "dp": "central", "dp_adaptive_clip": True,
     "dp_nodes": 4, "metrics_port": 0, "bulk": "off", "max_payload_mb": 16.5, "data_path": "held out.npz"},
])
def test_to_argv_gives_the_same_configuration_back_through_the_command(values, captured):
    # `potluck up` starts its server with to_argv(): the flags must mean exactly the settings.
    config = ServerConfig.from_mapping(values)
    result = runner.invoke(app, ["server", *config.to_argv()])
    assert result.exit_code == 0, result.output
    assert captured["config"] == config
