"""The examples in examples/ run (STYLE 18: examples are tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from potluck.tasks.builtin import resolve_task
from potluck.tasks.protocol import DataInfo, metric_of

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(autouse=True)
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def test_charlm_tiny_trains_and_samples(tmp_path):
    import charlm_tiny

    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox jumps over the lazy dog.\n" * 60)
    sample = charlm_tiny.main(str(text), rounds=1, nodes=2)
    assert sample.startswith("\n") and len(sample.encode("utf-8", errors="replace")) >= 100
    task = resolve_task("charlm_tiny:task")
    assert task.name == "charlm-tiny" and task.settings.positions == "rope"


def test_mae_regression_ranks_by_its_own_metric(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    price = x @ [2.0, -1.0] + 1.0
    (tmp_path / "h.csv").write_text("a,b,price\n" + "\n".join(f"{a},{b},{p}" for (a, b), p in zip(x, price)))
    task = resolve_task("mae_regression:MAERegression")
    assert metric_of(task).name == "mae" and not metric_of(task).higher_is_better
    data = task.load_data(tmp_path / "h.csv")
    params = task.build(DataInfo.from_dataset(data), 0)
    out = task.evaluate(params, data)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    hidden = np.maximum(x @ w["0.weight"].T + w["0.bias"], 0)
    pred = (hidden @ w["2.weight"].T + w["2.bias"])[:, 0]
    assert out.metrics["mae"] == pytest.approx(np.mean(np.abs(pred - price)), rel=1e-4)


MNIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"


def _write_idx(path: Path, a: np.ndarray) -> None:
    import struct

    header = struct.pack(">BBBB", 0, 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    path.write_bytes(header + a.astype(np.uint8).tobytes())


def test_mcmahan2017_runs_the_papers_setting_on_mnist_shaped_data(tmp_path, capsys):
    import mcmahan2017

    task = mcmahan2017.two_nn()
    from potluck.tasks.protocol import DataInfo

    params = task.build(DataInfo((28, 28), 10), 0)
    assert sum(a.size for a in params.values()) == 199_210  # the paper's 2NN: 784-200-200-10
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 50)):
        y = np.arange(n) % 10
        x = rng.integers(0, 40, size=(n, 28, 28)) + (y[:, None, None] * 20)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", y)
    found = mcmahan2017.main(["--data", str(tmp_path), "--rounds", "2", "--nodes", "20", "--runs",
                              str(tmp_path / "runs")])
    assert set(found) == {"iid", "shards"} and (tmp_path / "runs" / "shards" / "metrics.jsonl").is_file()
    out = capsys.readouterr().out
    assert "paper (Table 1)" in out and "87" in out and "664" in out


@pytest.mark.slow
def test_mcmahan2017_2nn_iid_reaches_97_percent_within_50_rounds(tmp_path):
    if not MNIST.is_dir():
        pytest.skip(f"MNIST is not in {MNIST}")
    import mcmahan2017

    rounds = mcmahan2017.run("iid", MNIST, 50, tmp_path / "run")
    assert rounds is not None and rounds <= 50
