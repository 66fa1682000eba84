"""Prometheus metrics: round figures, the fleet's counts, a node's process, the endpoint."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from potluck.backends.fleet import FleetPool
from potluck.core.errors import AccessDenied, SchemaMismatch, UnknownId
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.observability.metrics import FleetMetrics, NodeMetrics, RunMetrics
from potluck.runtime.coordinator import Coordinator, RoundPolicy
from potluck.runtime.logcontext import current_log_fields
from potluck.strategies.registry import make_strategy
from potluck.testing import ScriptedPool, zero_delta
from potluck.transport.fleet_messages import IncomingResult, JoinInfo

MODEL = Params.from_arrays({"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)})


def record(rnd: int, **changes) -> RoundRecord:
    base = dict(round=rnd, num_nodes=3, sampled=4, seconds=0.2 * rnd, model_digest="d",
                metrics={"accuracy": 0.5 + rnd / 10, "loss": 1.0 / rnd}, metric="accuracy", higher_is_better=True,
                attempts=1, train_loss=0.7, failures={"timed_out": 1}, bytes_up=1000)
    return RoundRecord(**{**base, **changes})


def value(registry: CollectorRegistry, name: str, /, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_round_figures_follow_the_committed_records():
    reg = CollectorRegistry()
    run = RunMetrics(reg, "r1")
    run.start(first_round=3, rounds=10)  # a resumed run: rounds 1 and 2 were committed before
    assert value(reg, "potluck_current_round", run_id="r1") == 2
    assert value(reg, "potluck_rounds_planned", run_id="r1") == 10
    run.on_commit(record(3, aggregate_seconds=0.004), None, None)
    run.on_commit(record(4, attempts=3, federated_metrics={"accuracy": 0.8, "loss": 0.4}), None, None)
    assert value(reg, "potluck_rounds_committed_total", run_id="r1") == 2
    assert value(reg, "potluck_current_round", run_id="r1") == 4
    assert value(reg, "potluck_round_retries_total", run_id="r1") == 2
    assert value(reg, "potluck_round_duration_seconds_count", run_id="r1") == 2
    assert value(reg, "potluck_round_duration_seconds_sum", run_id="r1") == pytest.approx(0.6 + 0.8)
    assert value(reg, "potluck_round_duration_seconds_bucket", run_id="r1", le="0.5") == 0
    assert value(reg, "potluck_round_duration_seconds_bucket", run_id="r1", le="1.0") == 2
    assert value(reg, "potluck_aggregation_seconds_count", run_id="r1") == 1
    assert value(reg, "potluck_aggregation_seconds_sum", run_id="r1") == pytest.approx(0.004)
    assert value(reg, "potluck_evaluation_accuracy", run_id="r1", split="held_out") == pytest.approx(0.9)
    assert value(reg, "potluck_evaluation_loss", run_id="r1", split="held_out") == pytest.approx(0.25)
    assert value(reg, "potluck_evaluation_accuracy", run_id="r1", split="federated") == pytest.approx(0.8)
    assert value(reg, "potluck_eval_metric", run_id="r1", split="held_out", name="accuracy") == pytest.approx(0.9)
    assert value(reg, "potluck_eval_metric", run_id="r1", split="federated", name="loss") == pytest.approx(0.4)
    assert value(reg, "potluck_eval_primary", run_id="r1", split="held_out", name="accuracy") == pytest.approx(0.9)
    assert value(reg, "potluck_train_loss", run_id="r1") == pytest.approx(0.7)
    assert value(reg, "potluck_round_nodes", run_id="r1", state="sampled") == 4
    assert value(reg, "potluck_round_nodes", run_id="r1", state="aggregated") == 3
    assert value(reg, "potluck_results_not_aggregated_total", run_id="r1", reason="timed_out") == 2
    assert value(reg, "potluck_aggregated_update_bytes_total", run_id="r1") == 2000


def test_missing_figures_leave_no_series_and_nan_keeps_the_last_value():
    reg = CollectorRegistry()
    run = RunMetrics(reg, "r1")
    run.on_commit(record(1, metrics={"accuracy": math.nan, "loss": math.nan}, train_loss=math.nan), None, None)
    for name in ("potluck_evaluation_accuracy", "potluck_eval_metric", "potluck_train_loss", "potluck_privacy_epsilon"):
        assert not [s for m in reg.collect() if m.name == name for s in m.samples], name
    run.on_commit(record(2, federated_metrics={"accuracy": 0.6}), None, None)
    run.on_commit(record(3), None, None)  # no federated evaluation this round: the gauge keeps 0.6
    assert value(reg, "potluck_evaluation_accuracy", run_id="r1", split="federated") == pytest.approx(0.6)


def test_a_gauge_per_metric_the_task_reports_and_none_it_does_not():
    reg = CollectorRegistry()
    run = RunMetrics(reg, "r1")
    run.on_commit(record(1, metrics={"loss": 2.5, "perplexity": 12.2}, metric="perplexity", higher_is_better=False,
                         federated_metrics={"loss": 2.6, "perplexity": 13.5}), None, None)
    assert value(reg, "potluck_eval_metric", run_id="r1", split="held_out", name="perplexity") == pytest.approx(12.2)
    assert value(reg, "potluck_eval_metric", run_id="r1", split="federated", name="perplexity") == pytest.approx(13.5)
    assert value(reg, "potluck_eval_primary", run_id="r1", split="federated", name="perplexity") == pytest.approx(13.5)
    assert value(reg, "potluck_evaluation_loss", run_id="r1", split="held_out") == pytest.approx(2.5)
    assert not [s for m in reg.collect() if m.name == "potluck_evaluation_accuracy" for s in m.samples]
    names = {s.labels["name"] for m in reg.collect() if m.name == "potluck_eval_metric" for s in m.samples}
    assert names == {"loss", "perplexity"}


def test_epsilon_is_set_when_a_record_carries_it():
    reg = CollectorRegistry()
    run = RunMetrics(reg, "r1")
    run.on_commit(record(1, extras={"epsilon": 0.42}), None, None)
    assert value(reg, "potluck_privacy_epsilon", run_id="r1") == pytest.approx(0.42)
    run.on_commit(record(2, extras={"epsilon": math.nan}), None, None)
    assert value(reg, "potluck_privacy_epsilon", run_id="r1") == pytest.approx(0.42)


def test_two_runs_in_one_process_keep_their_own_registries():
    a, b = CollectorRegistry(), CollectorRegistry()
    RunMetrics(a, "same").on_commit(record(1), None, None)
    RunMetrics(b, "same")
    assert value(a, "potluck_rounds_committed_total", run_id="same") == 1
    assert value(b, "potluck_rounds_committed_total", run_id="same") == 0


class PhaseAndContext:
    """A hook that keeps the aggregation time it was told and which round the log context named."""

    def __init__(self) -> None:
        self.phases: list[tuple[int, float]] = []
        self.rounds_in_context: list[object] = []

    def on_commit(self, record, params, strategy) -> None:
        self.phases.append((record.round, record.aggregate_seconds))
        self.rounds_in_context.append(current_log_fields().get("round"))


def test_the_coordinator_reports_aggregation_time_and_names_the_round_in_logs():
    pool = ScriptedPool({n: (lambda ins, n=n: FitResult(ins.round, n, zero_delta(ins.params), 5)) for n in "ab"})
    hook = PhaseAndContext()
    reg = CollectorRegistry()
    run = RunMetrics(reg, "r")
    Coordinator(pool, make_strategy("fedavg"), RoundPolicy(rounds=2), hooks=[hook, run]).run(MODEL)
    assert [r for r, _ in hook.phases] == [1, 2]
    assert all(s >= 0 for _, s in hook.phases)
    assert hook.rounds_in_context == [1, 2]
    assert "round" not in current_log_fields()  # only inside the round
    assert value(reg, "potluck_aggregation_seconds_count", run_id="r") == 2


# -- the fleet: counted through the handler, read from the pool -------------------------------

def pool() -> FleetPool:
    return FleetPool(run_id="r1", model_id="m", schema=MODEL.schema, data_info_json=b"{}", allow={"a", "b"},
                     heartbeat_seconds=1.0, require_signatures=False)  # signing is not what is counted here


def test_fleet_counts_joins_results_bytes_and_maps_the_pools_refusals():
    fleet_pool = pool()
    reg = CollectorRegistry()
    handler = FleetMetrics(reg, fleet_pool, "r1").handler
    handler.join(JoinInfo("a", "m", "", 10), None)  # the probe: not a join
    session = handler.join(JoinInfo("a", "m", MODEL.schema_digest, 10, cpus=4, gpus=1), None).session
    assert value(reg, "potluck_nodes_joined_total", run_id="r1") == 1
    assert value(reg, "potluck_nodes_connected", run_id="r1") == 1
    assert value(reg, "potluck_fleet_node_gpus", run_id="r1", node_id="a") == 1
    assert value(reg, "potluck_fleet_node_examples", run_id="r1", node_id="a") == 10
    with pytest.raises(AccessDenied, match="'c' is not on this server's allow-list"):
        handler.join(JoinInfo("c", "m", MODEL.schema_digest, 10), None)
    with pytest.raises(SchemaMismatch, match="this server trains model 'm'"):
        handler.join(JoinInfo("b", "other", MODEL.schema_digest, 10), None)
    with pytest.raises(UnknownId, match="unknown or expired session"):
        handler.heartbeat("no-such-session", None)

    outcomes = fleet_pool.fit([FitInstruction(1, "a", MODEL, {}, 0)], timeout=10.0)
    done = threading.Thread(target=lambda: list(outcomes))  # the coordinator's side
    done.start()
    ins = handler.next_instruction(session, 5.0, None)
    assert ins is not None
    sent = len(ins.payload)
    update = zero_delta(MODEL).encode()
    assert handler.submit(IncomingResult(session, ins.instruction_id, 1, 10, payload=update, run_id="r1"), None) is False
    assert handler.submit(IncomingResult(session, ins.instruction_id, 1, 10, payload=update, run_id="r1"), None) is True
    done.join(10)
    with pytest.raises(UnknownId, match="no instruction"):
        handler.submit(IncomingResult(session, "nope", 1, 10, payload=update), None)

    assert value(reg, "potluck_payload_bytes_sent_total", run_id="r1") == sent
    assert value(reg, "potluck_payload_bytes_received_total", run_id="r1") == 3 * len(update)
    assert value(reg, "potluck_results_accepted_total", run_id="r1") == 1  # the repeat is not
    assert value(reg, "potluck_joins_refused_total", run_id="r1", reason="not_allowed") == 1
    assert value(reg, "potluck_joins_refused_total", run_id="r1", reason="model_id") == 1
    assert value(reg, "potluck_results_rejected_total", run_id="r1", reason="unknown_session") == 1
    assert value(reg, "potluck_results_rejected_total", run_id="r1", reason="duplicate") == 1
    assert value(reg, "potluck_results_rejected_total", run_id="r1", reason="unknown_instruction") == 1
    assert dict(fleet_pool.rejections) == {"not_allowed": 1, "model_id": 1, "unknown_session": 1, "duplicate": 1,
                                           "unknown_instruction": 1}  # the pool's own API is unchanged

    handler.leave(session, "done", None)
    assert value(reg, "potluck_nodes_left_total", run_id="r1") == 1
    assert value(reg, "potluck_nodes_connected", run_id="r1") == 0
    assert handler.max_payload_bytes == fleet_pool.max_payload_bytes


# -- a node -------------------------------------------------------------------------------------

def test_node_metrics_count_the_loop_and_read_the_process():
    metrics = NodeMetrics(None, "n0")
    reg = metrics.registry
    metrics.joined(cpus=2, gpus=0)
    metrics.received(100)
    metrics.sent(40)
    metrics.instruction("fit", 3, ok=True)
    metrics.instruction("evaluate", 3, ok=False)
    assert value(reg, "potluck_node_joins_total", node_id="n0") == 1
    assert value(reg, "potluck_node_payload_bytes_received_total", node_id="n0") == 100
    assert value(reg, "potluck_node_payload_bytes_sent_total", node_id="n0") == 40
    assert value(reg, "potluck_node_instructions_total", node_id="n0", kind="fit", outcome="ok") == 1
    assert value(reg, "potluck_node_instructions_total", node_id="n0", kind="evaluate", outcome="failed") == 1
    assert value(reg, "potluck_node_instructions_total", node_id="n0", kind="fit", outcome="failed") == 0
    assert value(reg, "potluck_node_round", node_id="n0") == 3
    assert value(reg, "potluck_node_cpus", node_id="n0") == 2
    assert value(reg, "potluck_node_gpus", node_id="n0") == 0
    assert value(reg, "potluck_node_cpu_seconds_total", node_id="n0") > 0
    assert value(reg, "potluck_node_rss_bytes", node_id="n0") > 10 * 2**20
