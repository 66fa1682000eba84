"""What one committed round produced: the line written to ``metrics.jsonl``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Contribution:
    """One update aggregated into a round, as the ledger records it.

    ``update_digest`` is the BLAKE3 of the update as the node sent it (after any
    compression), ``weight`` its number of examples; ``public_key`` and ``signature``
    are hex (empty when the pool does not sign, e.g. a test pool).
    """

    node_id: str
    update_digest: str
    weight: int
    public_key: str = ""
    signature: str = ""


@dataclass(frozen=True)
class Failure:
    """One result that was not aggregated, and why.

    ``kind`` is the bucket it is counted in (``failed``, ``timed_out``, ``left``,
    ``rejected``); ``cause`` is the reason as the node or the coordinator gave it, e.g.
    ``fit raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (…)``;
    ``attempt`` the attempt at the round it happened in.
    """

    node_id: str
    kind: str
    cause: str
    attempt: int = 1

    def __str__(self) -> str:
        return f"{self.node_id}: {self.cause}"


@dataclass(frozen=True)
class RoundProvenance:
    """What went into a committed round, for the ledger: the digest of the settings every
    sampled node was given, the contributions in the order they were folded in, and
    every node asked in this round (any attempt) whose update is not among them, with
    the reason (``failed``, ``timed_out``, ``left``, ``rejected``, or ``discarded``: its
    update came in an attempt that missed its quorum)."""

    settings_digest: str
    contributions: tuple[Contribution, ...] = ()
    absent: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RoundRecord:
    """Figures of one committed round.

    ``metrics`` holds the task's metrics by name, ``loss`` included, from centralized
    evaluation on the held-out set (empty when there is none); ``federated_metrics``
    the same from the nodes' validation splits, each the mean of the nodes' values
    weighted by their examples, when that round ran federated evaluation. ``metric``
    names the task's primary metric and ``higher_is_better`` its direction (up for a
    classifier's; perplexity, mse or loss down), so :func:`best_record` ranks rounds
    the right way.
    ``failures`` counts the committed attempt's results not aggregated, by reason
    (``failed``, ``timed_out``, ``left``, ``rejected``); ``failure_causes`` holds every
    failure of every attempt at the round (node, reason, cause, attempt) in the order
    they happened. ``bytes_up`` is the size of the aggregated updates as encoded for the
    wire (after any compression); ``extras`` holds figures from optional parts of the
    run, such as the privacy spent (``epsilon``). ``aggregate_seconds`` is the time
    spent folding results in, finishing the aggregate and taking the server step,
    retried attempts included (for the hooks' timings; like ``provenance`` it is not
    written, so a resumed run's lines match the original's).
    """

    round: int
    num_nodes: int
    sampled: int
    seconds: float
    model_digest: str
    _: KW_ONLY
    metrics: Mapping[str, float] = field(default_factory=dict)
    federated_metrics: Mapping[str, float] = field(default_factory=dict)
    metric: str = "loss"
    higher_is_better: bool = False
    attempts: int = 1
    num_examples: int = 0
    train_loss: float = math.nan
    failures: Mapping[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    extras: Mapping[str, float] = field(default_factory=dict)
    failure_causes: tuple[Failure, ...] = ()
    # Handed to the hooks (the ledger, Prometheus), not written to metrics.jsonl.
    provenance: RoundProvenance | None = field(default=None, compare=False, repr=False)
    aggregate_seconds: float = field(default=math.nan, compare=False, repr=False)

    @property
    def loss(self) -> float:
        """Held-out loss (NaN without a held-out set)."""
        return self.metrics.get("loss", math.nan)

    @property
    def federated_loss(self) -> float:
        return self.federated_metrics.get("loss", math.nan)

    @property
    def primary(self) -> float:
        """The primary metric on the held-out set (NaN when not evaluated)."""
        return self.metrics.get(self.metric, math.nan)

    @property
    def federated_primary(self) -> float:
        return self.federated_metrics.get(self.metric, math.nan)

    def to_json(self) -> dict[str, Any]:
        """The line for ``metrics.jsonl``. JSON has no NaN: missing figures are null.

        Besides ``metrics`` and ``federated_metrics``, the figures older lines had at the
        top level stay there: ``loss`` and ``federated_loss`` always, and each of
        :data:`COMPAT_METRICS` (with its ``federated_`` twin) when the task reports it or
        ranks by it, so readers of older runs keep working."""
        plain = self if self.provenance is None else replace(self, provenance=None)
        out = {k: _null_nan(v) for k, v in asdict(plain).items() if k not in _NOT_WRITTEN}
        for name in ("metrics", "federated_metrics", "extras"):
            out[name] = {k: _null_nan(v) for k, v in getattr(self, name).items()}
        out["failure_causes"] = [asdict(f) for f in self.failure_causes]
        for name in ("loss", *(m for m in COMPAT_METRICS if m == self.metric or m in self.metrics)):
            out[name] = _null_nan(self.metrics.get(name, math.nan))
            out[f"federated_{name}"] = _null_nan(self.federated_metrics.get(name, math.nan))
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """A record from its ``metrics.jsonl`` line, this format's or an older one's
        (top-level figures and no ``metrics``: see :func:`_metrics_of_old_line`)."""
        known: dict[str, Any] = {k: _nan_null(v) for k, v in data.items() if k in cls.__dataclass_fields__}
        for name in ("failures", "metrics", "federated_metrics", "extras"):
            known[name] = {k: _nan_null(v) for k, v in (data.get(name) or {}).items()}
        known["failure_causes"] = tuple(Failure(**f) for f in data.get("failure_causes") or ())
        if "metrics" not in data:
            known.update(_metrics_of_old_line(data))
        for name in _NOT_WRITTEN:
            known.pop(name, None)
        return cls(**known)


# The figures metrics.jsonl held at the top level before tasks declared their own metrics
# (besides ``loss``): still written there when the task reports them, and read back from
# lines written before, so older readers and ``--resume`` of older runs keep working.
# Prometheus keeps a ``potluck_evaluation_<name>`` gauge for each (observability/metrics.py).
COMPAT_METRICS = ("accuracy",)
_NOT_WRITTEN = ("provenance", "aggregate_seconds")


def _metrics_of_old_line(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics of a line written before ``metrics`` existed: its non-null top-level
    ``loss`` and :data:`COMPAT_METRICS`; it ranked by the first of those it reports
    (higher is better), else by loss."""
    held_out: dict[str, float] = {}
    federated: dict[str, float] = {}
    for name in ("loss", *COMPAT_METRICS):
        if data.get(name) is not None:
            held_out[name] = float(data[name])
        if data.get(f"federated_{name}") is not None:
            federated[name] = float(data[f"federated_{name}"])
    ranked = [m for m in COMPAT_METRICS if m in held_out or m in federated]
    return {"metrics": held_out, "federated_metrics": federated,
            "metric": ranked[0] if ranked else "loss", "higher_is_better": bool(ranked)}


def best_record(records: Sequence[RoundRecord]) -> RoundRecord | None:
    """The round whose held-out primary metric is best, in the direction the last record
    names (the highest for a classifier's, the lowest for perplexity); None when no round has a number."""
    if not records:
        return None
    metric, higher = records[-1].metric, records[-1].higher_is_better
    scored = [r for r in records if not math.isnan(r.metrics.get(metric, math.nan))]
    if not scored:
        return None
    if higher:
        return max(scored, key=lambda r: r.metrics[metric])
    return min(scored, key=lambda r: r.metrics[metric])


def _null_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _nan_null(value: Any) -> Any:
    return math.nan if value is None else value
