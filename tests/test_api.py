"""The Python API: the package root's names, ``potluck.simulate`` and its round hooks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import potluck
from potluck.api import round_hook
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.strategies import make_strategy
from potluck.tasks.protocol import EvalOutput, FitOutput, MetricSpec
from potluck.testing import ScriptedPool

# Removing one of these from the package root breaks users' imports: add, never drop silently.
PUBLIC = {
    "AggregationRule", "Aggregator", "BufferedAggregator", "ConfigError", "DataError", "DataInfo", "Dataset", "EvalOutput",
    "EvaluateInstruction", "EvaluateOn", "EvaluateResult", "FedAvg", "FitInstruction", "FitOutput", "FitResult",
    "Hook", "LOSS_METRIC", "MetricSpec", "NodeError", "NodeFailed", "NodeLeft", "NodeTimedOut", "NonFiniteError",
    "Option", "Params", "ParamsError", "ParamsKind", "PlainStep", "PotluckError", "RoundDecision", "RoundFailed",
    "RoundHook", "RoundRecord", "RunDirError", "SchemaMismatch", "ServerStep", "SimulationConfig",
    "SimulationResult", "Strategy", "StrategyError", "Task", "TaskError", "WeightedMean", "__version__",
    "make_strategy", "simulate",
}


def test_the_root_exports_every_public_name():
    missing = PUBLIC - set(potluck.__all__)
    assert not missing, f"removed from potluck.__all__: {sorted(missing)}"
    for name in potluck.__all__:
        assert getattr(potluck, name) is not None, name
    assert set(potluck.__all__) <= set(dir(potluck))


def test_the_root_names_are_the_layers_own_objects():
    from potluck.apps.simulate import SimulationResult
    from potluck.strategies.base import Strategy
    from potluck.tasks.protocol import Task

    assert potluck.Strategy is Strategy and potluck.Task is Task and potluck.SimulationResult is SimulationResult
    with pytest.raises(AttributeError, match="no attribute 'simulat'"):
        potluck.simulat  # noqa: B018


@pytest.mark.slow
def test_import_potluck_stays_light():
    code = "import sys, potluck; print(json.dumps(sorted(m for m in sys.modules if m.startswith(('torch', 'potluck.'))" \
           ")))"
    done = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, timeout=60)
    loaded = json.loads(done.stdout)
    assert not [m for m in loaded if m.startswith("torch")]
    assert not [m for m in loaded if m.startswith(("potluck.apps", "potluck.runtime", "potluck.api"))], loaded


# -- the hook seam in the coordinator, with scripted nodes ---------------------------------------

START = Params.from_arrays({"w": np.zeros(3, np.float32)})


def step(ins: FitInstruction) -> FitResult:
    delta = np.full(3, float(ins.config.get("lr", 0.0)), np.float32)
    return FitResult(ins.round, ins.node_id, Params.from_arrays({"w": delta}, ParamsKind.DELTA), 10)


class Schedule(potluck.Hook):
    def __init__(self) -> None:
        self.seen: list[int] = []

    def after_round(self, record, params):
        self.seen.append(record.round)
        if record.round == 1:
            return potluck.RoundDecision(fit={"lr": 0.5})
        if record.round == 3:
            return potluck.RoundDecision(stop="enough")
        return None


def test_a_hook_changes_the_next_rounds_fit_settings_and_stops_the_run():
    pool = ScriptedPool({"a": step, "b": step})
    hook = Schedule()
    coordinator = Coordinator(pool, make_strategy("fedavg"), RoundPolicy(rounds=6), fit_config={"lr": 1.0, "k": 2},
                              hooks=[hook])
    final = coordinator.run(START)
    assert hook.seen == [1, 2, 3] and coordinator.stopped == "enough"
    by_round = {ins.round: dict(ins.config) for ins in pool.calls}
    assert by_round[1] == {"lr": 1.0, "k": 2}
    assert by_round[2] == by_round[3] == {"lr": 0.5, "k": 2}  # merged into, not replacing, the fit settings
    np.testing.assert_allclose(final["w"], [2.0, 2.0, 2.0])  # 1.0 + 0.5 + 0.5


def test_every_hook_runs_and_every_stop_reason_is_kept():
    calls: list[str] = []

    class Stop(potluck.Hook):
        def __init__(self, name):
            self.name = name

        def after_round(self, record, params):
            calls.append(self.name)
            return potluck.RoundDecision(stop=f"{self.name} says so")

    coordinator = Coordinator(ScriptedPool({"a": step}), make_strategy("fedavg"), RoundPolicy(rounds=3),
                              hooks=[Stop("x"), Stop("y")])
    coordinator.run(START)
    assert calls == ["x", "y"] and coordinator.stopped == "x says so; y says so"


def test_a_stop_at_the_last_round_is_no_early_stop():
    coordinator = Coordinator(ScriptedPool({"a": step}), make_strategy("fedavg"), RoundPolicy(rounds=1),
                              hooks=[round_hook(lambda r, p: potluck.RoundDecision(stop="done"))])
    coordinator.run(START)
    assert coordinator.stopped is None


@pytest.mark.parametrize("fit, stop, message", [
    ({"lr": [1, 2]}, None, "'lr' is \\[1, 2\\]"),
    ({}, "", "stop must be a reason"),
])
def test_a_bad_round_decision_is_refused(fit, stop, message):
    with pytest.raises(potluck.ConfigError, match=message):
        potluck.RoundDecision(fit=fit, stop=stop)


def test_a_round_decision_keeps_its_own_copy():
    given = {"lr": 0.1}
    decision = potluck.RoundDecision(fit=given)
    given["lr"] = 9.0
    assert decision.fit == {"lr": 0.1}


# -- potluck.simulate -----------------------------------------------------------------------------


class Recorder:
    """A numpy task that remembers each fit's settings (one instance: in-process nodes share it)."""

    name = "recorder"
    metric = MetricSpec("loss")

    def __init__(self) -> None:
        self.configs: list[tuple[int, dict]] = []

    def load_data(self, path):
        rng = np.random.default_rng(0)
        return potluck.Dataset(rng.normal(size=(60, 2)).astype(np.float32), rng.integers(0, 2, 60))

    def build(self, info, seed):
        return Params.from_arrays({"w": np.zeros(2, np.float32)})

    def fit(self, params, data, config, seed):
        self.configs.append((int(config["round"]), dict(config)))
        return FitOutput(Params.from_arrays({"w": params["w"] + float(config["lr"])}), len(data))

    def evaluate(self, params, data):
        return EvalOutput(float(np.abs(params["w"]).sum()), len(data))


RECORDER = Recorder()


class CountRounds(potluck.Hook):
    def after_round(self, record, params):
        if record.round == 1:
            return potluck.RoundDecision(fit={"lr": 0.25, "round": 2})
        if record.round == 2:
            return potluck.RoundDecision(fit={"round": 3}, stop="two rounds are plenty")
        return None


def test_simulate_applies_a_hooks_fit_change_and_stops_cleanly(tmp_path):
    RECORDER.configs.clear()
    result = potluck.simulate(task=f"{__name__}:RECORDER", rounds=5, nodes=2, partition="iid",
                              fit={"lr": 1.0, "round": 1}, run_dir=str(tmp_path / "run"), hooks=[CountRounds()])
    assert [r.round for r in result.records] == [1, 2] and result.stopped == "two rounds are plenty"
    assert {(rnd, cfg["lr"]) for rnd, cfg in RECORDER.configs} == {(1, 1.0), (2, 0.25)}
    np.testing.assert_allclose(result.final_params["w"], [1.25, 1.25])
    written = Params.decode((result.run_dir / "model.safetensors").read_bytes())
    assert written.digest == result.records[-1].model_digest == result.final_params.digest
    assert len((result.run_dir / "metrics.jsonl").read_text().splitlines()) == 2


def test_simulate_takes_a_config_and_settings_and_a_function_hook(tmp_path):
    seen: list[int] = []
    config = potluck.SimulationConfig(task=f"{__name__}:RECORDER", nodes=2, fit={"lr": 1.0, "round": 0})
    result = potluck.simulate(config, rounds=2, run_dir=str(tmp_path / "run"),
                              hooks=[lambda record, params: seen.append(record.round)])
    assert seen == [1, 2] and result.stopped is None and len(result.records) == 2


def test_simulate_refuses_bad_arguments_with_clear_errors(tmp_path):
    with pytest.raises(potluck.ConfigError, match="potluck.simulate: unknown setting 'round'"):
        potluck.simulate(round=3)
    with pytest.raises(potluck.ConfigError, match="config must be a SimulationConfig, got a dict"):
        potluck.simulate({"rounds": 3})  # type: ignore[arg-type]
    with pytest.raises(potluck.ConfigError, match="a hook is a potluck.Hook or a function"):
        potluck.simulate(task=f"{__name__}:RECORDER", hooks=[42], run_dir=str(tmp_path / "run"))


def test_a_function_hook_returning_something_else_is_named(tmp_path):
    with pytest.raises(potluck.ConfigError, match="returned a str; return a potluck.RoundDecision or None"):
        potluck.simulate(task=f"{__name__}:RECORDER", rounds=2, nodes=2, fit={"lr": 1.0, "round": 0},
                         run_dir=str(tmp_path / "run"), hooks=[lambda record, params: "stop"])


def test_run_rounds_runs_a_task_and_hooks_in_memory_and_names_a_broken_node():
    from potluck.testing import run_rounds

    data = RECORDER.load_data(None)
    parts = {"a": data.subset(np.arange(0, 30)), "b": data.subset(np.arange(30, 60))}
    final, records = run_rounds(RECORDER, parts, rounds=4, fit={"lr": 1.0, "round": 0}, hooks=[round_hook(
        lambda record, params: potluck.RoundDecision(stop="halfway") if record.round == 2 else None)])
    assert [r.round for r in records] == [1, 2] and np.isnan(records[0].loss)
    np.testing.assert_allclose(final["w"], [2.0, 2.0])

    class Broken(Recorder):
        def fit(self, params, data, config, seed):
            raise RuntimeError("out of memory")

    with pytest.raises(potluck.RoundFailed, match="fit raised RuntimeError: out of memory"):
        run_rounds(Broken(), parts, rounds=1, fit={"lr": 1.0, "round": 0})


def test_evaluate_on_extra_data_keeps_metrics_and_stops_at_a_threshold(tmp_path):
    extra = potluck.Dataset(np.zeros((5, 2), np.float32), np.zeros(5, np.int64), source="extra.npz")
    every_round = potluck.EvaluateOn(RECORDER, extra, stop_above=3.0)
    every_other = potluck.EvaluateOn(RECORDER, extra, every=2)
    result = potluck.simulate(task=f"{__name__}:RECORDER", rounds=5, nodes=2, fit={"lr": 1.0, "round": 0},
                              run_dir=str(tmp_path / "run"), hooks=[every_round, every_other])
    assert every_round.results == {1: {"loss": 2.0}, 2: {"loss": 4.0}}  # |w| summed: 1 + 1, then 2 + 2
    assert every_other.results == {2: {"loss": 4.0}}
    assert result.stopped == "loss 4 > 3 on extra.npz" and len(result.records) == 2


def test_evaluate_on_names_a_metric_the_task_does_not_report(tmp_path):
    extra = potluck.Dataset(np.zeros((5, 2), np.float32), np.zeros(5, np.int64))
    with pytest.raises(potluck.ConfigError, match="reports \\['loss'\\], not 'accuracy'"):
        potluck.simulate(task=f"{__name__}:RECORDER", rounds=2, nodes=2, fit={"lr": 1.0, "round": 0},
                         run_dir=str(tmp_path / "run"), hooks=[potluck.EvaluateOn(RECORDER, extra, metric="accuracy")])
    with pytest.raises(potluck.ConfigError, match="every must be ≥ 1"):
        potluck.EvaluateOn(RECORDER, extra, every=0)


@pytest.mark.slow
def test_a_hooks_fit_change_reaches_nodes_in_worker_processes(tmp_path):
    result = potluck.simulate(task=f"{__name__}:RECORDER", rounds=3, nodes=2, workers=2, partition="iid",
                              fit={"lr": 1.0, "round": 1}, run_dir=str(tmp_path / "run"), hooks=[CountRounds()])
    assert result.stopped == "two rounds are plenty"
    np.testing.assert_allclose(result.final_params["w"], [1.25, 1.25])  # lr 1.0, then the hook's 0.25


def test_a_stopped_run_resumes_to_its_last_round_from_its_own_fit_settings(tmp_path):
    settings = dict(task=f"{__name__}:RECORDER", rounds=4, nodes=2, fit={"lr": 1.0, "round": 1},
                    run_dir=str(tmp_path / "run"))
    stopped = potluck.simulate(hooks=[CountRounds()], **settings)
    assert [r.round for r in stopped.records] == [1, 2]
    resumed = potluck.simulate(resume=True, **settings)
    assert [r.round for r in resumed.records] == [1, 2, 3, 4] and resumed.resumed_from == 2
    np.testing.assert_allclose(resumed.final_params["w"], [3.25, 3.25])  # 1 + 0.25, then lr 1.0 again: a hook's change is not saved
