"""The settings sections commands compose: each field declared once (``settings.setting``).

=================  ================================================  ======================
section            what it holds                                     used by
=================  ================================================  ======================
TaskSection        the Task and its data                             simulate, server, node
RoundSection       rounds: sampling, deadline, quorum, strategy      simulate, server
FederationSection  the virtual nodes of a simulation                 simulate
ValidationSection  each node's validation split                      simulate, node
MonitoringSection  Prometheus metrics and log format                 simulate, server, node
TransportSection   TLS and gRPC message sizes                        server, node
FleetSection       what a server offers and expects of real nodes    server
NodeSection        who a node is and where it dials                  node
NodeLoopSection    how a node behaves towards its server             node
=================  ================================================  ======================

The protections (compression, differential privacy, secure aggregation) are a section
of their own in ``core/protection_settings.py``. Rules that relate fields of one
section are its ``_rules``; rules across sections belong to the configuration that
composes them (``core/config.py``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from potluck.core.settings import Rule, Settings, setting, show

PARTITIONS = ("iid", "dirichlet", "shards", "natural", "contiguous")
LOG_FORMATS = ("text", "json")
ATTACKS = ("none", "sign-flip", "scale", "random")  # simulated Byzantine nodes: runtime/attacks.py
SECAGG_DROPOUT_AT = ("masked-input", "unmask")
BACKENDS = ("local", "ray")  # where simulate's virtual nodes run: backends/ (ray: backends/ray_pool.py)

# Limits that keep accepted values usable downstream: an infinite wait, or one beyond
# threading.TIMEOUT_MAX, raises OverflowError in the pools (30 days is far below that and
# far above any real round); gRPC caps one message below 2 GiB; the wire carries rounds
# as uint32.
MAX_WAIT_SECONDS = 30 * 86400.0
MAX_MESSAGE_MB = 2047.0
MIN_CHUNK_MB = 1 / 1024  # 1 KiB: smaller chunks round down to zero bytes
MAX_ROUNDS = 2**32 - 1
WAIT_RULE = f"in (0, {MAX_WAIT_SECONDS:,.0f}] (seconds; 30 days at most)"


SERVER_OPTS = ("auto", "fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad")  # strategies.SERVER_OPTS


def _wait(value: float) -> bool:
    return 0 < value <= MAX_WAIT_SECONDS


def _fraction(value: float) -> bool:
    return 0 < value <= 1


def _split(value: float) -> bool:
    return 0 <= value < 1


def _one_of(choices: tuple[str, ...]) -> dict[str, Any]:
    return {"check": lambda v: v in choices, "rule": f"one of {', '.join(choices)}"}


def _at_least(low: int) -> dict[str, Any]:
    return {"check": lambda v: v >= low, "rule": f"≥ {low}"}


# Metrics whose better direction --stop-at knows; any other metric names it: NAME>=V or NAME<=V.
HIGHER_IS_BETTER = ("accuracy", "f1", "auc", "precision", "recall", "r2")
LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae", "rmse", "error")
_STOP_AT = re.compile(r"\s*([A-Za-z_][\w.-]*)\s*(>=|<=|=)\s*([^\s=<>]+)\s*")


def parse_stop_at(text: str) -> tuple[str, bool, float] | None:
    """``accuracy=0.97`` → ``("accuracy", True, 0.97)``: the metric, whether the run stops
    at or above the value (else at or below), the value; None when ``text`` is not a target."""
    match = _STOP_AT.fullmatch(text)
    if match is None:
        return None
    name, op, raw = match.groups()
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if op == "=":
        if name not in HIGHER_IS_BETTER + LOWER_IS_BETTER:
            return None
        return name, name in HIGHER_IS_BETTER, value
    return name, op == ">=", value


def _is_bulk_setting(value: str) -> bool:
    if value in ("auto", "off"):
        return True
    host, sep, port = value.rpartition(":")
    return bool(sep and host) and port.isdigit() and int(port) <= 65535


def _is_ray_address(value: str) -> bool:
    if value in ("local", "auto"):
        return True
    host, sep, port = value.removeprefix("ray://").rpartition(":")
    return bool(sep and host) and port.isdigit() and int(port) <= 65535


@dataclass(frozen=True)
class TaskSection(Settings):
    data_path: str | None = setting(
        None, "Data for the task: CSV (label column), NPZ (x, y), IDX (MNIST) or an image folder. simulate splits "
        "it over the nodes; server evaluates on it; a node trains on it.", resumable=False,
        shown="the task's bundled data; a node must name its own")
    task: str = setting("digits", "Built-in task (digits, digits-sklearn, mlp, cnn) or module:attribute.",
                        resumable=False)


@dataclass(frozen=True)
class RoundSection(Settings):
    rounds: int = setting(30, "Rounds to run.", resumable=True,
                          check=lambda v: 1 <= v <= MAX_ROUNDS, rule=f"in [1, {MAX_ROUNDS}]")
    fraction: float = setting(1.0, "Fraction of the available nodes sampled per round.", resumable=False,
                              check=_fraction, rule="in (0, 1]")
    min_nodes: int = setting(1, "Sample at least this many nodes per round; a server waits for as many to "
                             "join before it starts.", resumable=False, **_at_least(1))
    quorum: float = setting(0.5, "Fraction of sampled nodes whose results a round needs to commit.",
                            resumable=True, check=_fraction, rule="in (0, 1]")
    round_timeout: float = setting(600.0, "Round deadline, seconds.", resumable=True, check=_wait, rule=WAIT_RULE)
    max_retries: int = setting(2, "Retries of a round that missed its quorum.", resumable=True, **_at_least(0))
    strategy: str = setting(
        "fedavg", "fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad, module:attr (your own), or robust to attacks: median, "
        "trimmed-mean (trim=β), krum (byzantine=f), multi-krum (byzantine=f, select=m), norm-bound (max_norm=C).",
        resumable=False)
    strategy_options: dict[str, Any] = setting(
        {}, "A strategy option, e.g. server_lr=0.01 or mu=0.1 (repeatable; a TOML table).", resumable=False,
        flag="--strategy-option", short="-S", metavar="KEY=VALUE", shown="none")
    server_opt: str = setting(
        "auto", "The server step applied to the aggregate: auto (the strategy's own), fedavg (plain), fedavgm "
        "(momentum), fedadam, fedyogi or fedadagrad; e.g. --strategy median --server-opt fedadam.",
        resumable=False, **_one_of(SERVER_OPTS))
    fit: dict[str, Any] = setting(
        {}, "A local training setting sent to nodes: lr, epochs, batch_size, optimizer, momentum, weight_decay "
        "(repeatable; a TOML table).", resumable=False, flag="--fit", short="-F", metavar="KEY=VALUE",
        shown="the task's")
    seed: int = setting(0, "Seed for splitting, sampling, initialisation and shuffling.", resumable=False,
                        **_at_least(0))
    test_fraction: float = setting(0.2, "Fraction of the task's bundled data held out for evaluation.",
                                   resumable=False, check=_split, rule="in [0, 1)")
    stop_at: str | None = setting(
        None, "End the run after the first round whose held-out metric reaches a target: accuracy=0.97, "
        "perplexity=4.5, loss=0.1, or 'NAME>=VALUE' / 'NAME<=VALUE' (quoted in a shell) for any metric the task reports.", resumable=True,
        check=lambda v: v is None or parse_stop_at(v) is not None, metavar="METRIC=VALUE", shown="off",
        rule=f"METRIC=VALUE with METRIC one of {', '.join(HIGHER_IS_BETTER + LOWER_IS_BETTER)}, or METRIC>=VALUE "
        "or METRIC<=VALUE, with a finite VALUE")
    federated_eval_every: int = setting(0, "Evaluate on the nodes' validation splits every k rounds (0: last "
                                        "round only).", resumable=True, **_at_least(0))
    keep_checkpoints: int = setting(
        0, "Keep the model and strategy files of only the last N rounds (0: all), plus round 0 and every "
        "--keep-every k-th round; the commit marks, metrics and ledger stay whole.", resumable=False,
        check=lambda v: v >= 0, rule="≥ 0 (0: keep all)")
    keep_every: int = setting(0, "With --keep-checkpoints, also keep every k-th round's files (0: none).",
                              resumable=False, check=lambda v: v >= 0, rule="≥ 0")
    run_dir: str | None = setting(
        None, "Where the run is written. simulate makes a new folder; server reuses runs/server and resumes the "
        "run it holds.", resumable=True, shown="runs/<time>-<task> (simulate), runs/<time>-up (up), runs/server (server)")


@dataclass(frozen=True)
class ValidationSection(Settings):
    val_fraction: float = setting(0.1, "Fraction of each node's data kept for federated evaluation.",
                                  resumable=False, check=_split, rule="in [0, 1)")


@dataclass(frozen=True)
class FederationSection(Settings):
    nodes: int = setting(10, "Number of virtual nodes.", resumable=False, **_at_least(1))
    partition: str = setting("dirichlet", "How data is split over nodes: iid, dirichlet, shards, natural.",
                             resumable=False, **_one_of(PARTITIONS))
    alpha: float = setting(0.5, "Dirichlet concentration; smaller is more non-IID.", resumable=False,
                           check=lambda v: v > 0 and math.isfinite(v), rule="a finite number > 0")
    test_data: str | None = setting(
        None, "Evaluate on this data (read like --data-path; MNIST's test set: DIR/t10k) instead of holding out "
        "--test-fraction of --data-path, which is then split whole over the nodes.", resumable=False,
        shown="none: hold out --test-fraction")
    min_examples: int = setting(1, "With --partition dirichlet, the fewest examples a node gets: a node the draw "
                                "leaves short is topped up from the largest nodes.", resumable=False, **_at_least(1))
    label_column: str = setting("label", "CSV column holding the label.", resumable=False)
    group_column: str | None = setting(None, "CSV column naming each example's owner, for --partition natural.",
                                       resumable=False, shown="none")
    workers: int = setting(1, "1: all nodes in this process; N > 1: N worker processes; 0: one per core.",
                           resumable=True, check=lambda v: v >= 0, rule="≥ 0 (0: one per core, 1: in-process)")
    backend: str = setting("local", "Where the virtual nodes run: local (this process, or --workers processes) or "
                           "ray (actors on a Ray cluster: --workers N > 1 of them, else as many as fit; needs "
                           "potluck's ray extra).", resumable=True, **_one_of(BACKENDS))
    ray_address: str = setting("local", "With --backend ray: local (start Ray here for the run), auto (the cluster "
                               "`ray start` runs on this machine), HOST:PORT of a cluster's head, or ray://HOST:PORT.",
                               resumable=True, check=_is_ray_address,
                               rule="local, auto, HOST:PORT or ray://HOST:PORT")
    node_cpus: float = setting(1.0, "CPUs each Ray actor reserves; it serves many virtual nodes, one at a time.",
                               resumable=True, check=lambda v: 0 < v < math.inf, rule="a finite number > 0")
    node_gpus: float = setting(0.0, "GPUs each Ray actor reserves; a fraction shares a GPU (0.25: four actors "
                               "per GPU).", resumable=True, check=lambda v: 0 <= v < math.inf,
                               rule="a finite number ≥ 0")
    attack: str = setting("none", "Simulated Byzantine nodes: none, sign-flip (send −Δ), scale (send 100·Δ) or "
                          "random (Gaussian noise of Δ's norm).", resumable=False, **_one_of(ATTACKS))
    attack_fraction: float = setting(0.0, "Fraction of nodes that attack, chosen from --seed.", resumable=False,
                                     check=lambda v: 0 <= v <= 1, rule="in [0, 1]")
    secagg_dropout: float = setting(0.0, "Fraction of each round's nodes that drop out of secure aggregation.",
                                    resumable=False, check=_split, rule="in [0, 1)")
    secagg_dropout_at: str = setting("unmask", "When they drop: masked-input (before sending it) or unmask "
                                     "(after).", resumable=False, **_one_of(SECAGG_DROPOUT_AT))

    def _rules(self) -> list[Rule]:
        return [
            *((name, self.backend == "ray" or getattr(self, name) == default,
               f"{show(default)} unless backend is ray (they place Ray actors)")
              for name, default in (("ray_address", "local"), ("node_cpus", 1.0), ("node_gpus", 0.0))),
            ("attack_fraction", self.attack != "none" or self.attack_fraction == 0,
             "0 when attack is none (choose an attack too)"),
            ("attack_fraction", self.attack == "none" or self.attack_fraction * self.nodes >= 0.5,
             f"large enough for at least one of the {show(self.nodes)} nodes to attack (≥ 0.5 / nodes) "
             f"when attack is {show(self.attack)}"),
        ]


@dataclass(frozen=True)
class MonitoringSection(Settings):
    metrics_port: int | None = setting(
        None, "Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port).", resumable=True,
        check=lambda v: v is None or 0 <= v <= 65535, rule="in [0, 65535] (0: any free port)", shown="off")
    metrics_host: str = setting("127.0.0.1", "Address the metrics endpoint listens on.", resumable=True,
                                check=lambda v: bool(v.strip()), rule="a host name or address, e.g. 127.0.0.1")
    log_format: str = setting("text", "text (a progress bar where there is one), or json: one JSON object per "
                              "line.", resumable=True, **_one_of(LOG_FORMATS))


@dataclass(frozen=True)
class TransportSection(Settings):
    tls_dir: str = setting("tls", "Folder made by `potluck certs`: the CA, certificates and keys.",
                           resumable=False)
    insecure: bool = setting(False, "Plaintext, no client certificates. Only for tests on one machine.",
                             resumable=False)
    max_message_mb: float = setting(8.0, "Largest gRPC message, MiB; chunks must fit under it.", resumable=True,
                                    check=lambda v: 0 < v <= MAX_MESSAGE_MB,
                                    rule=f"in (0, {MAX_MESSAGE_MB:g}] (gRPC's limit)")
    chunk_mb: float = setting(2.0, "Size of the chunks a payload travels in over gRPC, MiB.", resumable=True)

    def _rules(self) -> list[Rule]:
        return [("chunk_mb", MIN_CHUNK_MB <= self.chunk_mb < self.max_message_mb,
                 f"≥ {MIN_CHUNK_MB} (1 KiB) and below max_message_mb ({self.max_message_mb})")]


@dataclass(frozen=True)
class FleetSection(Settings):
    bind: str = setting("127.0.0.1:7450", "host:port to listen on.", resumable=True,
                        check=lambda v: ":" in v, rule="host:port")
    bulk: str = setting("auto", "Where the bulk lane for model payloads listens (mutual TLS, beside gRPC; nodes "
                        "that cannot reach it use gRPC): auto (the gRPC port + 1), off, or HOST:PORT.",
                        resumable=True, check=_is_bulk_setting, rule="auto, off or HOST:PORT (port 0–65535)")
    allow: list[str] | None = setting(None, "Only these node ids may join (repeatable).", resumable=True,
                                      metavar="NODE_ID", shown="any node with a certificate")
    heartbeat_seconds: float = setting(2.0, "How often nodes check in, seconds.", resumable=True,
                                       check=_wait, rule=WAIT_RULE)
    wait_for_nodes: float = setting(600.0, "How long to wait for --min-nodes nodes before the first round, "
                                    "seconds.", resumable=True, check=_wait, rule=WAIT_RULE)
    max_payload_mb: float = setting(2048.0, "Largest model payload a node may send or fetch, MiB.", resumable=True,
                                    check=lambda v: 0 < v < math.inf, rule="a finite number > 0")
    dp_nodes: int | None = setting(None, "Nodes in the federation, for DP accounting (sampling rate) and the "
                                   "fixed denominator.", resumable=False, shown="--min-nodes")
    max_examples: int = setting(100_000_000, "Most training examples a node may declare at join; a result may "
                                "report at most what its node declared (results are weighted by it).",
                                resumable=True, **_at_least(1))
    calls_per_node: int = setting(8, "Calls one node (certificate) may have in progress at once; more are refused "
                                  "as busy.", resumable=True, **_at_least(1))
    call_timeout: float = setting(30.0, "Seconds a call may wait for its request; a payload gets this plus its size "
                                  "at 64 KiB/s. Slower calls are cancelled.", resumable=True, check=_wait,
                                  rule=WAIT_RULE)
    insecure_remote: bool = setting(False, "With --insecure, also listen on an address other machines can reach "
                                    "(plaintext, anyone may claim any node id).", resumable=True)


@dataclass(frozen=True)
class NodeSection(Settings):
    server_address: str = setting("", "HOST:PORT of the server.", resumable=False, shown="none: required",
                                  check=lambda v: bool(v.strip()), rule="set: HOST:PORT of the server")
    node_id: str = setting("", "This node's id; must be the CN of its certificate (tls/nodes/ID.crt).",
                           resumable=False, shown="none: required", check=lambda v: bool(v.strip()),
                           rule="set: this node's id")


@dataclass(frozen=True)
class NodeLoopSection(Settings):
    model_id: str | None = setting(None, "The model this node expects to train; refused if the server trains "
                                   "another.", resumable=False, shown="any")
    key_dir: str | None = setting(None, "Where this node's Ed25519 signing key (ID.signing.key, made on first "
                                  "start, mode 0600) and its ledger view live.", resumable=False,
                                  shown="TLS_DIR/nodes")
    no_bulk: bool = setting(False, "Move model payloads as gRPC chunks only, never over the server's bulk lane.",
                            resumable=True)
    poll_seconds: float = setting(10.0, "Longest wait for an instruction in one pull, seconds.", resumable=True,
                                  check=_wait, rule=WAIT_RULE)
    max_backoff: float = setting(30.0, "Longest wait, seconds, between attempts to reach the server (exponential "
                                 "backoff with full jitter up to this).", resumable=True,
                                 check=lambda v: 0.1 <= v <= MAX_WAIT_SECONDS, rule="in [0.1, 2,592,000]")
    leave_on_ledger_mismatch: bool = setting(
        False, "Leave the run (exit 1) when the server's ledger forks, rewrites history or leaves out this node's "
        "update; otherwise it is logged at ERROR.", resumable=True)
