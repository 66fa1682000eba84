"""Simulation end to end in-process: determinism, resume, the run directory."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potluck.apps.simulate import run_simulation
from potluck.core.errors import ConfigError, RoundFailed, RunDirError
from potluck.core.params import Params
from potluck.tasks.builtin import resolve_task


class CrashAfter:
    """Simulates a process dying right after round `k` was committed."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_commit(self, record, params, strategy):
        if record.round == self.k:
            raise KeyboardInterrupt


def test_same_seed_same_digest_other_seed_other_digest(tmp_path, small_config):
    a = run_simulation(small_config(tmp_path / "a"))
    b = run_simulation(small_config(tmp_path / "b"))
    c = run_simulation(small_config(tmp_path / "c", seed=1))
    assert a.final_params.digest == b.final_params.digest
    assert a.final_params.digest != c.final_params.digest


def test_run_directory_contents(tmp_path, small_config):
    result = run_simulation(small_config(tmp_path, federated_eval_every=2))
    run = result.run_dir
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        assert {"round", "accuracy", "loss", "num_nodes", "seconds"} <= set(line)
        assert 0 <= line["accuracy"] <= 1 and line["num_nodes"] == 5
        assert line["metrics"] == {"accuracy": line["accuracy"], "loss": line["loss"]}
        assert line["metric"] == "accuracy" and line["higher_is_better"] is True
    assert lines[1]["federated_accuracy"] is not None and lines[0]["federated_accuracy"] is None
    final = Params.decode((run / "model.safetensors").read_bytes())
    assert final.digest == result.final_params.digest == lines[-1]["model_digest"]
    assert (run / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'strategy = "fedavg"' in (run / "config.toml").read_text()
    assert sorted(p.name for p in (run / "checkpoints").glob("round-*.json")) == [
        f"round-{i:04d}.json" for i in range(5)
    ]


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_resume_after_crash_gives_the_uninterrupted_digest(tmp_path, small_config, strategy):
    opts = {"server_lr": 0.01} if strategy == "fedadam" else {}
    whole = run_simulation(small_config(tmp_path / "whole", strategy=strategy, strategy_options=opts))
    cfg = small_config(tmp_path / "cut", strategy=strategy, strategy_options=opts)
    with pytest.raises(KeyboardInterrupt):
        run_simulation(cfg, hooks=[CrashAfter(2)])
    resumed = run_simulation(cfg, resume=True)
    assert resumed.resumed_from == 2
    assert resumed.final_params.digest == whole.final_params.digest
    assert [r.round for r in resumed.records] == [1, 2, 3, 4]


def test_resume_refuses_other_settings_and_new_run_refuses_used_dir(tmp_path, small_config):
    cfg = small_config(tmp_path)
    run_simulation(cfg)
    with pytest.raises(RunDirError, match="already holds a run"):
        run_simulation(cfg)
    with pytest.raises(RunDirError, match="other settings.*alpha"):
        run_simulation(cfg.replace(alpha=0.3, rounds=6), resume=True)
    more = run_simulation(cfg.replace(rounds=6), resume=True)
    assert more.resumed_from == 4 and [r.round for r in more.records] == [1, 2, 3, 4, 5, 6]


def test_resume_needs_run_dir_and_a_committed_round(tmp_path, small_config):
    with pytest.raises(ConfigError, match="--run-dir"):
        run_simulation(small_config(tmp_path).replace(run_dir=None), resume=True)
    with pytest.raises(RunDirError, match="no run to resume"):
        run_simulation(small_config(tmp_path / "empty"), resume=True)


class GrowingDigits:
    """The digits Task, but its trained parameters gain an array the model never had."""

    def __init__(self) -> None:
        self.inner = resolve_task("digits")
        self.name = "growing-digits"

    def load_data(self, path):
        return self.inner.load_data(path)

    def build(self, info, seed):
        return self.inner.build(info, seed)

    def fit(self, params, data, config, seed):
        out = self.inner.fit(params, data, config, seed)
        arrays = {**dict(out.params), "extra": np.zeros(3, np.float32)}
        return type(out)(Params.from_arrays(arrays), out.num_examples, out.metrics)

    def evaluate(self, params, data):
        return self.inner.evaluate(params, data)


def test_task_whose_parameters_change_shape_fails_with_reason(tmp_path, small_config):
    with pytest.raises(RoundFailed, match="round 1 failed"):
        run_simulation(small_config(tmp_path, task=f"{__name__}:GrowingDigits", max_retries=0))


@pytest.mark.slow
def test_process_pool_matches_in_process_digest(tmp_path, small_config):
    one = run_simulation(small_config(tmp_path / "one", rounds=2))
    two = run_simulation(small_config(tmp_path / "two", rounds=2, workers=2))
    assert one.final_params.digest == two.final_params.digest


@pytest.mark.parametrize(
    ("strategy", "options", "partition"),
    [("fedprox", {"mu": 0.01}, "shards"), ("fedadam", {"server_lr": 0.01}, "dirichlet")],
)
def test_strongly_non_iid_converges(tmp_path, small_config, strategy, options, partition):
    cfg = small_config(
        tmp_path, strategy=strategy, strategy_options=options, partition=partition, alpha=0.1,
        rounds=15, nodes=10, fit={"epochs": 2},
    )
    result = run_simulation(cfg)
    accuracies = [r.metrics["accuracy"] for r in result.records]
    assert accuracies[-1] > 0.7 > accuracies[0] - 0.3
    assert np.isfinite([r.loss for r in result.records]).all()


def test_natural_partition_by_group_column(tmp_path, small_config):
    """A CSV with a `site` column: one node per site, each holding only its own rows."""
    rng = np.random.default_rng(0)
    rows = ["site,label," + ",".join(f"f{i}" for i in range(4))]
    for n in range(120):
        label = n % 3
        features = rng.normal(size=4) + label
        rows.append(f"site{n % 4},{label}," + ",".join(f"{v:.4f}" for v in features))
    data = tmp_path / "sites.csv"
    data.write_text("\n".join(rows) + "\n")
    cfg = small_config(tmp_path, task="mlp", data_path=str(data), group_column="site", partition="natural",
                       nodes=4, rounds=3, min_nodes=1)
    result = run_simulation(cfg)
    assert [r.num_nodes for r in result.records] == [4, 4, 4]
    from potluck.apps.simulate import federation_spec
    from potluck.runtime.federation import build_federation

    federation = build_federation(federation_spec(cfg))
    sites = [set(node.train.groups) | set(node.val.groups) for node in federation.nodes.values()]
    assert sorted(site for s in sites for site in s) == ["site0", "site1", "site2", "site3"]
    assert all(len(s) == 1 for s in sites)
    assert sum(len(n.train) + len(n.val) for n in federation.nodes.values()) == 120 - len(federation.test)


def test_test_data_replaces_the_held_out_fraction(tmp_path):
    from potluck.apps.simulate import federation_spec
    from potluck.core.config import SimulationConfig
    from potluck.runtime.federation import build_federation

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(80, 4)).astype(np.float32), np.arange(80) % 2
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:7], y=y[:7])
    config = SimulationConfig(task="mlp", data_path=str(tmp_path / "train.npz"), test_data=str(tmp_path / "test.npz"),
                              nodes=4, partition="iid", val_fraction=0.0)
    federation = build_federation(federation_spec(config))
    assert len(federation.test) == 7
    assert sum(len(n.train) for n in federation.nodes.values()) == 80  # nothing held out of the training data
