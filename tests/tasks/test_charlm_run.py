"""charlm end to end: `potluck simulate` trains it on a text file, `potluck generate` samples it."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from potluck.cli.main import app
from potluck.core.errors import TaskError
from potluck.tasks.generation import sample_from_run

SPEECHES = {
    "ALICE": "I think the rain will stop before the evening comes.",
    "BOB": "Then we shall walk along the river to the old mill.",
    "CAROL": "Bring bread and cheese, and do not forget the lamp.",
}
TINY = ["-F", "context=16", "-F", "width=16", "-F", "depth=1", "-F", "heads=2", "-F", "steps=10",
        "-F", "batch_size=8", "-F", "device=cpu"]


@pytest.fixture
def play(tmp_path):
    lines = [f"{name}:\n{line}\n\n" for _ in range(12) for name, line in SPEECHES.items()]
    path = tmp_path / "play.txt"
    path.write_text("".join(lines))
    return path


def simulate(*args: str) -> None:
    done = CliRunner().invoke(app, ["simulate", "--task", "charlm", *TINY, "--rounds", "2", *args])
    assert done.exit_code == 0, done.output


@pytest.mark.parametrize("partition", ["contiguous", "iid"])
def test_simulate_then_generate(tmp_path, play, partition):
    run = tmp_path / f"run-{partition}"
    simulate("--data-path", str(play), "--nodes", "4", "--partition", partition, "--run-dir", str(run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    assert records[-1]["loss"] < math.log(256)  # better than a uniform guess over bytes

    args = ["generate", str(run), "--prompt", "ALICE:", "--tokens", "30", "--seed", "5"]
    first, second = CliRunner().invoke(app, args), CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output and first.output.startswith("ALICE:")
    assert first.output != CliRunner().invoke(app, [*args[:-1], "6"]).output


def test_natural_partition_gives_one_node_per_speaker(tmp_path, play):
    run = tmp_path / "run"
    simulate("--data-path", str(play), "--nodes", "3", "--partition", "natural",
             "--group-column", r"^([A-Z]+):$", "--run-dir", str(run))
    (record, *_), = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]]
    assert record["num_nodes"] == 3


def test_generate_refuses_a_run_of_a_task_that_does_not_write_text(tmp_path):
    run = tmp_path / "digits"
    done = CliRunner().invoke(app, ["simulate", "--rounds", "1", "--nodes", "2", "--run-dir", str(run)])
    assert done.exit_code == 0, done.output
    with pytest.raises(TaskError, match="does not generate text"):
        sample_from_run(run, "x")
    done = CliRunner().invoke(app, ["generate", str(tmp_path / "nowhere"), "--prompt", "x"])
    assert done.exit_code == 1 and "has no config.toml" in done.output
