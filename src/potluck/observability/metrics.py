"""Prometheus metrics for a run, a server's fleet and a node, served at ``/metrics``.

Each object registers on a :class:`~prometheus_client.CollectorRegistry` it is given
(never the global one), so one process can hold several runs, or a server and nodes
in tests. Three groups, all named ``potluck_*`` (``docs/deployment.md`` lists them):

============  ==========================  =============================================
group         where                       from
============  ==========================  =============================================
RunMetrics    server, ``simulate``        the coordinator: committed rounds, timings,
                                          evaluation, ε (a RoundHook)
FleetMetrics  server                      calls from nodes (joins, leaves, accepted
                                          results, payload bytes) via a wrapping
                                          handler; live nodes and the pool's refusal
                                          counts read when scraped
NodeMetrics   ``potluck node``            the node loop (instructions, payload bytes)
                                          and this process (CPU seconds, RSS, GPUs)
============  ==========================  =============================================

:class:`RunMonitor` bundles the first two with an endpoint (``observability/endpoint.py``).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from potluck.core.records import COMPAT_METRICS, RoundRecord
from potluck.observability.endpoint import MetricsServer, final_scrape, serve_metrics
from potluck.transport.fleet_messages import HeartbeatInfo, IncomingResult, JoinInfo, OutgoingInstruction, Welcome

# Seconds. Rounds run from tens of milliseconds (small simulations) to many minutes.
ROUND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
AGGREGATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# FleetPool's refusal reasons that concern joining; every other reason concerns a call
# from a joined node (mostly results), and is exported as a rejected result.
JOIN_REFUSALS = frozenset({"not_allowed", "model_id", "schema", "protocol", "no_key", "bad_key", "key_changed"})


class RunMetrics:
    """Round figures of one run; add it to the coordinator's hooks.

    ``potluck_current_round`` is the last committed round (0 before the first), also
    after a resume; ``potluck_rounds_committed_total`` counts commits made by this
    process. ``potluck_eval_metric{name=…}`` holds each metric the task reports
    (``loss``, ``perplexity``, ``mse``, …) and ``potluck_eval_primary``
    the task's primary metric (labelled with its ``name``); evaluation gauges carry
    ``split="held_out"`` (the server's or simulation's test set) or
    ``split="federated"`` (the nodes' validation splits, on rounds that ran it). A NaN
    figure leaves its gauge as it was. ``potluck_evaluation_loss`` and, for each of
    ``core.records.COMPAT_METRICS``, ``potluck_evaluation_<name>`` are kept as they were
    named before tasks declared their metrics. ``potluck_privacy_epsilon`` is set when a
    record carries ``extras["epsilon"]``.
    """

    def __init__(self, registry: CollectorRegistry, run_id: str) -> None:
        def make(kind: Any, name: str, doc: str, labels: Sequence[str] = (), **kw: Any) -> Any:
            return kind(name, doc, ["run_id", *labels], registry=registry, **kw)

        self.run_id = run_id
        self._committed = make(Counter, "potluck_rounds_committed", "Rounds committed by this process.").labels(run_id)
        self._current = make(Gauge, "potluck_current_round", "The last committed round (0: none yet).").labels(run_id)
        self._planned = make(Gauge, "potluck_rounds_planned", "Rounds the run is configured for.").labels(run_id)
        self._retries = make(Counter, "potluck_round_retries", "Round attempts that missed their quorum and were retried.").labels(run_id)
        self._duration = make(Histogram, "potluck_round_duration_seconds",
                              "Wall time of a committed round, sampling to evaluation.", buckets=ROUND_BUCKETS).labels(run_id)
        self._aggregation = make(Histogram, "potluck_aggregation_seconds",
                                 "Time a round spent aggregating: folding results in, finishing, the server step.",
                                 buckets=AGGREGATION_BUCKETS).labels(run_id)
        self._nodes = make(Gauge, "potluck_round_nodes", "Nodes of the last committed round, by state.", ["state"])
        self._not_aggregated = make(Counter, "potluck_results_not_aggregated",
                                    "Sampled nodes whose result was not aggregated, by reason.", ["reason"])
        self._update_bytes = make(Counter, "potluck_aggregated_update_bytes",
                                  "Encoded size of the updates aggregated (after any compression).").labels(run_id)
        self._metric = make(Gauge, "potluck_eval_metric", "Each metric the task reports, of the last committed model.",
                            ["split", "name"])
        self._primary = make(Gauge, "potluck_eval_primary", "The task's primary metric, of the last committed model.",
                             ["split", "name"])
        self._compat = {name: make(Gauge, f"potluck_evaluation_{name}", f"The {name} of the last committed model.",
                                   ["split"]) for name in ("loss", *COMPAT_METRICS)}
        # Figures a run may not have (no test set, no federated evaluation, no DP) appear once set.
        self._train_loss = make(Gauge, "potluck_train_loss", "Mean local training loss of the last committed round.")
        self._epsilon = make(Gauge, "potluck_privacy_epsilon", "Differential privacy spent so far (ε).")

    def start(self, first_round: int, rounds: int) -> None:
        """Before the first round: where the run starts (after a resume) and where it ends."""
        self._current.set(first_round - 1)
        self._planned.set(rounds)

    def on_commit(self, record: RoundRecord, params: Any, strategy: Any) -> None:
        run_id = self.run_id
        self._committed.inc()
        self._current.set(record.round)
        self._retries.inc(max(0, record.attempts - 1))
        self._duration.observe(record.seconds)
        if not math.isnan(record.aggregate_seconds):
            self._aggregation.observe(record.aggregate_seconds)
        self._nodes.labels(run_id, "sampled").set(record.sampled)
        self._nodes.labels(run_id, "aggregated").set(record.num_nodes)
        for reason, count in record.failures.items():
            self._not_aggregated.labels(run_id, reason).inc(count)
        self._update_bytes.inc(record.bytes_up)
        for split, figures in (("held_out", record.metrics), ("federated", record.federated_metrics)):
            for name, value in figures.items():
                _set_finite(self._metric, (run_id, split, name), value)
                if name in self._compat:
                    _set_finite(self._compat[name], (run_id, split), value)
            _set_finite(self._primary, (run_id, split, record.metric), figures.get(record.metric))
        _set_finite(self._train_loss, (run_id,), record.train_loss)
        _set_finite(self._epsilon, (run_id,), record.extras.get("epsilon"))


def _set_finite(gauge: Any, labels: tuple[str, ...], value: object) -> None:
    """Set a gauge's child to a finite number; anything else (NaN, None) leaves it as it was."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        gauge.labels(*labels).set(value)


class FleetView(Protocol):
    """What :class:`FleetMetrics` needs of the server's pool (``backends.fleet.FleetPool``)."""

    max_payload_bytes: int
    rejections: Mapping[str, int]

    def node_ids(self) -> Sequence[str]: ...

    def node_info(self, node_id: str) -> JoinInfo | None: ...

    def join(self, info: JoinInfo, peer: str | None) -> Welcome: ...

    def next_instruction(self, session: str, wait: float, peer: str | None) -> OutgoingInstruction | None: ...

    def submit(self, result: IncomingResult, peer: str | None) -> bool: ...

    def heartbeat(self, session: str, peer: str | None) -> HeartbeatInfo: ...

    def leave(self, session: str, reason: str, peer: str | None) -> None: ...

    def count_refusal(self, reason: str) -> None: ...


class FleetMetrics:
    """What the server sees of its nodes.

    Serve :attr:`handler` (not the pool) so calls are counted on their way through:
    joins (rejoins included; the schema probe before a join is not one), clean leaves,
    accepted results (a repeated push is not), and payload bytes: models handed out
    (sent) and results pushed (received), as safetensors bytes without gRPC framing.
    Live nodes, their join-time resources and the pool's refusal counts are read when
    Prometheus scrapes.
    """

    def __init__(self, registry: CollectorRegistry, pool: FleetView, run_id: str) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["run_id"], registry=registry).labels(run_id)

        self.pool, self.run_id = pool, run_id
        self.joined = counter("potluck_nodes_joined", "Successful joins, rejoins included.")
        self.left = counter("potluck_nodes_left", "Nodes that left the run on purpose.")
        self.accepted = counter("potluck_results_accepted", "Results (fit and evaluate) accepted from nodes.")
        self.bytes_sent = counter("potluck_payload_bytes_sent", "Model bytes sent to nodes in instructions.")
        self.bytes_received = counter("potluck_payload_bytes_received", "Update bytes received from nodes in results.")
        self.handler = _MeteredHandler(pool, self)
        registry.register(_FleetCollector(pool, run_id))


class _MeteredHandler:
    """The pool as the servicer sees it, counting joins, leaves, accepted results and
    payload bytes on the way through. Every other attribute (heartbeats, refusals, the
    ledger's queries, ``max_payload_bytes``) is the pool's own."""

    def __init__(self, pool: FleetView, metrics: FleetMetrics) -> None:
        self.pool, self.metrics = pool, metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pool, name)

    def join(self, info: JoinInfo, *args: Any, **kwargs: Any) -> Welcome:
        welcome = self.pool.join(info, *args, **kwargs)
        if welcome.session:  # an empty session answers the probe that only asks what to build
            self.metrics.joined.inc()
        return welcome

    def next_instruction(self, *args: Any, **kwargs: Any) -> OutgoingInstruction | None:
        ins = self.pool.next_instruction(*args, **kwargs)
        if ins is not None:
            self.metrics.bytes_sent.inc(len(ins.payload))
        return ins

    def submit(self, result: IncomingResult, *args: Any, **kwargs: Any) -> bool:
        self.metrics.bytes_received.inc(len(result.payload))
        duplicate = self.pool.submit(result, *args, **kwargs)
        if not duplicate:
            self.metrics.accepted.inc()
        return duplicate

    def leave(self, *args: Any, **kwargs: Any) -> None:
        self.pool.leave(*args, **kwargs)
        self.metrics.left.inc()


class _FleetCollector:
    """Read at scrape time: live nodes, what each reported at join, refusals by reason."""

    def __init__(self, pool: FleetView, run_id: str) -> None:
        self.pool, self.run_id = pool, run_id

    def describe(self) -> Iterable[Metric]:
        return []  # names vary with what the pool holds; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        run_id = self.run_id
        live = list(self.pool.node_ids())
        connected = GaugeMetricFamily("potluck_nodes_connected", "Nodes that called in recently (live).",
                                      labels=["run_id"])
        connected.add_metric([run_id], len(live))
        yield connected
        reported = {
            "examples": GaugeMetricFamily("potluck_fleet_node_examples", "Training examples a live node reported at join.",
                                          labels=["run_id", "node_id"]),
            "cpus": GaugeMetricFamily("potluck_fleet_node_cpus", "CPUs a live node offered at join.",
                                      labels=["run_id", "node_id"]),
            "memory_bytes": GaugeMetricFamily("potluck_fleet_node_memory_bytes", "Memory a live node offered at join.",
                                              labels=["run_id", "node_id"]),
            "gpus": GaugeMetricFamily("potluck_fleet_node_gpus", "GPUs a live node offered at join.",
                                      labels=["run_id", "node_id"]),
        }
        for node_id in live:
            info = self.pool.node_info(node_id)
            if info is None:
                continue
            reported["examples"].add_metric([run_id, node_id], info.num_examples)
            reported["cpus"].add_metric([run_id, node_id], info.cpus)
            reported["memory_bytes"].add_metric([run_id, node_id], info.memory_bytes)
            reported["gpus"].add_metric([run_id, node_id], info.gpus)
        yield from reported.values()
        refused = CounterMetricFamily("potluck_joins_refused", "Joins refused, by reason.", labels=["run_id", "reason"])
        rejected = CounterMetricFamily("potluck_results_rejected",
                                       "Results and other calls from nodes refused, by reason.",
                                       labels=["run_id", "reason"])
        for reason, count in sorted(dict(self.pool.rejections).items()):
            (refused if reason in JOIN_REFUSALS else rejected).add_metric([run_id, reason], count)
        yield refused
        yield rejected


class NodeMetrics:
    """One node process: what its loop did, and what the process uses.

    ``registry=None`` makes a fresh one (:attr:`registry`). The node calls
    :meth:`joined`, :meth:`received`, :meth:`sent` and :meth:`instruction`. CPU seconds (user + system) and resident memory are read
    from this process when scraped (``/proc/self/statm``; where that is missing, the
    peak RSS). GPUs and CPUs are what the node offers at join.
    """

    def __init__(self, registry: CollectorRegistry | None, node_id: str) -> None:
        self.registry = registry = registry if registry is not None else CollectorRegistry()

        def make(kind: Any, name: str, doc: str, labels: Sequence[str] = ()) -> Any:
            return kind(name, doc, ["node_id", *labels], registry=registry)

        self.node_id = node_id
        self._joins = make(Counter, "potluck_node_joins", "Times this node joined a run (rejoins included).").labels(node_id)
        self._round = make(Gauge, "potluck_node_round", "The round of the last instruction this node answered.").labels(node_id)
        self._instructions = make(Counter, "potluck_node_instructions", "Instructions handled, by kind and outcome.",
                                  ["kind", "outcome"])
        self._sent = make(Counter, "potluck_node_payload_bytes_sent", "Update bytes this node pushed.").labels(node_id)
        self._received = make(Counter, "potluck_node_payload_bytes_received",
                              "Model bytes this node pulled.").labels(node_id)
        self._gpus = make(Gauge, "potluck_node_gpus", "GPUs this node offers.").labels(node_id)
        self._cpus = make(Gauge, "potluck_node_cpus", "CPUs this node offers.").labels(node_id)
        for kind in ("fit", "evaluate"):
            for outcome in ("ok", "failed"):
                self._instructions.labels(node_id, kind, outcome)
        registry.register(_ProcessCollector(node_id))

    def joined(self, cpus: int, gpus: int) -> None:
        self._joins.inc()
        self._cpus.set(cpus)
        self._gpus.set(gpus)

    def received(self, nbytes: int) -> None:
        self._received.inc(nbytes)

    def sent(self, nbytes: int) -> None:
        self._sent.inc(nbytes)

    def instruction(self, kind: str, rnd: int, ok: bool) -> None:
        self._instructions.labels(self.node_id, kind, "ok" if ok else "failed").inc()
        self._round.set(rnd)


class _ProcessCollector:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        times = os.times()
        cpu = CounterMetricFamily("potluck_node_cpu_seconds", "CPU time of the node process (user + system).",
                                  labels=["node_id"])
        cpu.add_metric([self.node_id], times.user + times.system)
        rss = GaugeMetricFamily("potluck_node_rss_bytes", "Resident memory of the node process.", labels=["node_id"])
        rss.add_metric([self.node_id], resident_bytes())
        return [cpu, rss]


def resident_bytes() -> int:
    """This process's resident set size now (Linux), or its peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RunMonitor:
    """Everything a process that runs rounds exposes: :class:`RunMetrics` (a hook for
    the coordinator) and, when a fleet ``pool`` is given, :class:`FleetMetrics` (serve
    :attr:`handler` to nodes instead of the pool), on a registry of their own.
    :meth:`serve` starts ``/metrics``; :meth:`close` stops it, once the final figures
    were scraped if anyone scrapes.

    Example::

        monitor = RunMonitor("run-1", rounds=30, port=9400)
        try:
            print("metrics at", monitor.serve())
            Coordinator(pool, strategy, policy, hooks=[run_dir, monitor.run]).run(params)
        finally:
            monitor.close()
    """

    def __init__(self, run_id: str, *, rounds: int, first_round: int = 1, pool: FleetView | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.run = RunMetrics(self.registry, run_id)
        self.run.start(first_round, rounds)
        self.fleet = FleetMetrics(self.registry, pool, run_id) if pool is not None else None
        self.host, self.port = host, port
        self.server: MetricsServer | None = None

    @property
    def handler(self) -> Any:
        """The FleetHandler to serve: the pool, counted on the way through."""
        if self.fleet is None:
            raise ValueError("this monitor watches no fleet")
        return self.fleet.handler

    def serve(self) -> str:
        """Start serving (once); returns the URL."""
        if self.server is None:
            self.server = serve_metrics(self.registry, self.host, self.port)
        return self.server.url

    def close(self, wait_for_final_scrape: bool = False) -> None:
        """Stop serving; with ``wait_for_final_scrape``, after the :func:`final_scrape`."""
        if self.server is None:
            return
        if wait_for_final_scrape:
            final_scrape(self.server)
        self.server.close()
