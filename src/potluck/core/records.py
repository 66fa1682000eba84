"""What one committed round produced: the line written to ``metrics.jsonl``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
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

    ``accuracy``/``loss`` come from centralized evaluation on the held-out set (NaN
    when there is none); ``federated_*`` from the nodes' validation splits when that
    round ran federated evaluation. ``failures`` counts the committed attempt's results
    not aggregated, by reason (``failed``, ``timed_out``, ``left``, ``rejected``);
    ``failure_causes`` holds every failure of every attempt at the round (node, reason,
    cause, attempt) in the order they happened. ``bytes_up`` is the size of
    the aggregated updates as encoded for the wire (after any compression); ``extras``
    holds figures from optional parts of the run, such as the privacy spent (``epsilon``).
    ``aggregate_seconds`` is the time spent folding results in, finishing the aggregate
    and taking the server step, retried attempts included (for the hooks' timings; like
    ``provenance`` it is not written, so a resumed run's lines match the original's).
    """

    round: int
    accuracy: float
    loss: float
    num_nodes: int
    sampled: int
    seconds: float
    model_digest: str
    attempts: int = 1
    num_examples: int = 0
    train_loss: float = math.nan
    federated_accuracy: float = math.nan
    federated_loss: float = math.nan
    failures: Mapping[str, int] = field(default_factory=dict)
    bytes_up: int = 0
    extras: Mapping[str, float] = field(default_factory=dict)
    failure_causes: tuple[Failure, ...] = ()
    # Handed to the hooks (the ledger, Prometheus), not written to metrics.jsonl.
    provenance: RoundProvenance | None = field(default=None, compare=False, repr=False)
    aggregate_seconds: float = field(default=math.nan, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        # JSON has no NaN: missing figures are written as null.
        plain = self if self.provenance is None else replace(self, provenance=None)
        out = {k: _null_nan(v) for k, v in asdict(plain).items() if k not in _NOT_WRITTEN}
        out["extras"] = {k: _null_nan(v) for k, v in self.extras.items()}
        out["failure_causes"] = [asdict(f) for f in self.failure_causes]
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        known: dict[str, Any] = {k: (math.nan if v is None else v) for k, v in data.items() if k in cls.__dataclass_fields__}
        known["failures"] = dict(data.get("failures") or {})
        known["extras"] = {k: (math.nan if v is None else v) for k, v in (data.get("extras") or {}).items()}
        known["failure_causes"] = tuple(Failure(**f) for f in data.get("failure_causes") or ())
        for name in _NOT_WRITTEN:
            known.pop(name, None)
        return cls(**known)


_NOT_WRITTEN = ("provenance", "aggregate_seconds")


def _null_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value
