"""The code blocks of docs/api.md and docs/from-flower.md run as written (Flower's side is only compiled:
Flower is not a dependency)."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import potluck
from conftest import REPO


def blocks(doc: str) -> dict[str, str]:
    """A doc's python blocks that start ``# name.py``, by file name."""
    found = re.findall(r"```python\n# (\w+\.py)[^\n]*\n(.*?)```", (REPO / "docs" / doc).read_text(encoding="utf-8"),
                       flags=re.S)
    return dict(found)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty current directory; the modules imported from it are forgotten afterwards."""
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", os.getcwd())])
    monkeypatch.chdir(tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_api_md_task_and_strategy_run_together(workdir):
    for name, code in blocks("api.md").items():
        (workdir / name).write_text(code, encoding="utf-8")
    result = potluck.simulate(task="my_task:Centroid", strategy="my_strategy:OneVoteEach",
                              strategy_options={"server_lr": 0.5}, partition="iid", nodes=4, rounds=3,
                              run_dir=str(workdir / "run"))
    losses = [r.loss for r in result.records]
    assert len(losses) == 3 and losses[-1] < losses[0]
    from my_strategy import OneVoteEach
    from my_task import Centroid

    # each round moves the centre server_lr × lr of the way to the nodes' mean: lr 0.5, 0.5, then 0.1
    left = (1 - 0.5 * 0.5) * (1 - 0.5 * 0.5) * (1 - 0.5 * 0.1)
    mean = Centroid().load_data(None).x.mean(axis=0)
    np.testing.assert_allclose(result.final_params["centre"], (1 - left) * mean, rtol=0.05)

    assert OneVoteEach().fit_config(1) == {"lr": 0.5} and OneVoteEach().fit_config(3) == {"lr": 0.1}


def test_from_flower_potluck_side_runs_and_flower_side_compiles(workdir):
    code = blocks("from-flower.md")
    assert set(code) == {"logreg.py", "flower_app.py", "potluck_task.py"}
    compile(code["flower_app.py"], "flower_app.py", "exec")
    for name in ("logreg.py", "potluck_task.py"):
        (workdir / name).write_text(code[name], encoding="utf-8")
    result = potluck.simulate(task="potluck_task:LogReg", strategy="fedavg", partition="iid", nodes=4, rounds=2,
                              fit={"lr": 0.5}, run_dir=str(workdir / "run"))
    assert len(result.records) == 2 and result.records[-1].metrics["accuracy"] > 0.5  # three classes
