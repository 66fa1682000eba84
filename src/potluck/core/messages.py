"""Typed instructions and results exchanged between the coordinator and nodes.

Small frozen dataclasses, the same in simulation and deployment; only the transport
layer converts them to and from wire formats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

from potluck.core.params import Params

# Values a strategy may put in a node's configuration, and a node may report as metrics.
Scalar = Union[bool, int, float, str]
ConfigDict = Mapping[str, Scalar]


@dataclass(frozen=True)
class FitInstruction:
    """Train locally, starting from ``params`` (full weights), for ``round``.

    ``seed`` fixes the node's local shuffling for this round, so a rerun of the same
    round gives the same update.
    """

    round: int
    node_id: str
    params: Params
    config: ConfigDict = field(default_factory=dict)
    seed: int = 0


@dataclass(frozen=True)
class UpdateSignature:
    """A node's Ed25519 signature over its update (the statement is built by
    ``potluck.core.digests.update_statement``) and the raw 32-byte public key it
    verifies with. The ledger records both with the update's digest."""

    public_key: bytes
    signature: bytes


@dataclass(frozen=True)
class FitResult:
    """A node's update for one instruction: ``params`` is a delta (local − global).

    ``signature`` is set by the node (or, in simulation, on the virtual node's behalf)
    and checked by the server before the result counts; ``None`` when unsigned.
    """

    round: int
    node_id: str
    params: Params
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    signature: UpdateSignature | None = None


@dataclass(frozen=True)
class EvaluateInstruction:
    """Evaluate ``params`` (full weights) on the node's validation split."""

    round: int
    node_id: str
    params: Params
    config: ConfigDict = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateResult:
    """A node's evaluation on its validation split: the mean ``loss`` over ``num_examples``
    and every further metric the task reports, by the task's names (the coordinator
    averages each over the nodes, weighted by ``num_examples``)."""

    round: int
    node_id: str
    loss: float
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
