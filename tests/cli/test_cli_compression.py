"""Compression settings on the command line and in TOML, and the bytes-up line of the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.cli.simulate import bytes_up_row
from potluck.core.config import ServerConfig, SimulationConfig
from potluck.core.errors import ConfigError
from potluck.core.params import Params
from potluck.core.records import RoundRecord

runner = CliRunner()


def test_simulate_with_top_k_reports_bytes_up(tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["simulate", "--nodes", "3", "--rounds", "2", "-F", "epochs=1", "--run-dir", str(run),
                                 "--compression", "topk", "--compression-ratio", "0.05"])
    assert result.exit_code == 0, result.output
    assert "bytes up per round" in result.output and "fewer than uncompressed" in result.output
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < line["bytes_up"] < 3 * 19640 / 9 for line in lines)  # 5 % of the entries, 3 nodes
    assert 'compression = "topk"' in (run / "config.toml").read_text()


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("simulate", ["--compression", "zip"], "compression must be one of none, quantize, topk, topk+quantize"),
        ("simulate", ["--compression", "quantize", "--compression-bits", "9"], "compression_bits must be in [1, 8]"),
        ("simulate", ["--compression-ratio", "0.1"], "compression_ratio must be left at 0.01 unless"),
        ("server", ["--compression", "topk", "--compression-ratio", "0"], "compression_ratio must be in (0, 1]"),
        ("server", ["--compression-bits", "4"], "compression_bits must be left at 8 unless compression quantizes"),
        ("up", ["--compression", "topk", "--compression-bits", "4"], "compression_bits must be left at 8 unless"),
    ],
)
def test_bad_settings_are_refused_with_the_rule(tmp_path, command, args, message):
    result = runner.invoke(app, [command, "--run-dir", str(tmp_path / "run"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("settings", [SimulationConfig, ServerConfig])
def test_toml_keys_round_trip(tmp_path, settings):
    path = tmp_path / "c.toml"
    path.write_text('compression = "topk+quantize"\ncompression_bits = 4\ncompression_ratio = 0.05\n')
    cfg = settings.load(path)
    assert (cfg.compression, cfg.compression_bits, cfg.compression_ratio) == ("topk+quantize", 4, 0.05)
    path.write_text(cfg.to_toml())
    assert settings.load(path) == cfg
    with pytest.raises(ConfigError, match="compression_bits must be an integer"):
        settings.from_mapping({"compression": "quantize", "compression_bits": 4.5})


def test_bytes_up_row():
    model = Params.from_arrays({"w": np.zeros(1000, np.float32)})
    plain = model.encoded_size  # a DELTA of this model is the same size

    def record(rnd, sent, nodes=2):
        return RoundRecord(rnd, nodes, nodes, 1.0, "d", metrics={"loss": 0.1}, bytes_up=sent)

    assert bytes_up_row([record(1, 0)], model) == ""  # a run from before bytes were recorded
    assert bytes_up_row([record(1, 2 * plain)], model) == f"{2 * plain / 1024:.1f} KiB"
    text = bytes_up_row([record(1, 2 * plain // 10), record(2, 2 * plain // 10)], model)
    assert text.startswith(f"{2 * plain // 10 / 1024:.1f} KiB") and "(10.0× fewer than uncompressed)" in text
