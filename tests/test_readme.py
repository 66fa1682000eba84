"""Every command in README.md runs as written (STYLE 18: what we tell people works).

The fenced ``bash`` blocks are read in order; each line (comments dropped) is one
command. A fast test checks that every option each ``potluck`` command names exists; a
slow test runs them all, in order, in one fresh folder, at small size:

- a ``potluck simulate`` or ``potluck up`` is given ``--rounds 1`` last (a later flag
  wins), or ``--rounds 2`` when it resumes the run before it;
- files a command reads are made first: ``mytask.py`` and ``experiment.toml`` from the
  README's own blocks, ``data.csv`` and ``./images/`` as small data sets, and
  ``../shared/data/`` (MNIST, Tiny Shakespeare) resolved from the repository;
- the install and test commands (:data:`NOT_RUN`) are what made this environment, and
  ``potluck server`` / ``potluck node`` name a real host (``fl.example.org``), so they
  are only parsed (:data:`PARSE_ONLY`); ``potluck up`` runs the same code on one machine.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main

from potluck.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MNIST = ROOT.parent / "shared" / "data" / "mnist"
NOT_RUN = ("python3 -m venv", ".venv/bin/python -m pytest")
PARSE_ONLY = ("potluck server", "potluck node")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def commands() -> list[str]:
    lines = [re.sub(r"(^|\s+)#.*$", "", line).strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line]


def potluck_calls(command: str) -> list[list[str]]:
    """The ``potluck`` invocations of one line (``a && b``), without redirections."""
    calls = []
    for part in command.split("&&"):
        words = shlex.split(part.split(">")[0])
        if words and words[0] == "potluck":
            calls.append(words[1:])
    return calls


def test_the_readme_has_the_commands_this_test_expects():
    found = commands()
    assert any(c.startswith("potluck simulate --help") for c in found)
    assert any("--resume" in c for c in found) and any(c.startswith("potluck ledger proof") for c in found)
    assert len(found) >= 25


@pytest.mark.parametrize("command", [c for c in commands() if c.startswith("potluck")])
def test_every_option_in_the_readme_exists(command):
    root = typer.main.get_command(app)
    for args in potluck_calls(command):
        cmd, rest = root, list(args)
        while rest and hasattr(cmd, "commands") and rest[0] in cmd.commands:
            cmd = cmd.commands[rest.pop(0)]
        options = {"--help", *(opt for param in cmd.params for opt in [*param.opts, *param.secondary_opts])}
        unknown = [w for w in rest if w.startswith("-") and w.split("=")[0] not in options]
        assert not unknown, f"{command}: {unknown} not options of {cmd.name}"


def test_the_options_table_names_real_options():
    simulate = typer.main.get_command(app).commands["simulate"]
    options = {opt for param in simulate.params for opt in param.opts}
    table = [line for line in README.splitlines() if line.startswith("| `-")]
    named = {flag for line in table for flag in re.findall(r"`(--?[a-z][\w-]*)", line.split("|")[1])}
    assert named and named <= options, named - options
    for wanted in ("--test-fraction", "--val-fraction", "--test-data", "--stop-at", "--keep-checkpoints",
                   "--min-examples"):
        assert wanted in named


def small(command: str) -> str:
    parts = []
    for part in command.split("&&"):
        words = part.split()
        if words[:2] in (["potluck", "simulate"], ["potluck", "up"]) and "--help" not in words:
            part = part.rstrip() + (" --rounds 2" if "--resume" in words else " --rounds 1") + " "
        parts.append(part)
    return "&&".join(parts).replace("../shared/data/", str(MNIST.parent) + "/")


def make_inputs(folder: Path) -> None:
    task = next(b for b in blocks("python") if b.startswith("# mytask.py"))
    (folder / "mytask.py").write_text(task)
    (folder / "experiment.toml").write_text(blocks("toml")[0])
    rng = np.random.default_rng(0)
    rows = [f"{i % 3},{','.join(f'{v:.3f}' for v in rng.normal(size=4) + i % 3)}" for i in range(90)]
    (folder / "data.csv").write_text("label,a,b,c,d\n" + "\n".join(rows) + "\n")
    from PIL import Image

    for label in ("cat", "dog"):
        (folder / "images" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 255, size=(12, 12), dtype=np.uint8) // (2 if label == "cat" else 1)
            Image.fromarray(pixels).save(folder / "images" / label / f"{i}.png")


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path):
    if not MNIST.is_dir():
        pytest.skip(f"MNIST is not in {MNIST}")
    make_inputs(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for command in commands():
        if command.startswith(NOT_RUN) or command.startswith(PARSE_ONLY):
            continue
        done = subprocess.run(["bash", "-c", small(command)], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
