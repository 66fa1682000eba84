"""What the fleet protocol carries, as plain dataclasses on both sides of the wire.

``convert.py`` turns these into protobuf and back (and nothing else does); the
server-side handler (a NodePool) and the node loop only ever see these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from potluck.core.messages import Scalar
from potluck.transport.revocation import CertificateStamp

PROTOCOL = "potluck.v1"
InstructionKind = Literal["fit", "evaluate", "exchange"]


@dataclass(frozen=True)
class JoinInfo:
    node_id: str
    task_name: str
    schema_digest: str
    num_examples: int
    task_version: str = ""
    cpus: int = 0
    memory_bytes: int = 0
    gpus: int = 0
    public_key: bytes = b""  # raw Ed25519 key the node signs updates with
    certificate: CertificateStamp | None = None  # the client certificate's; set by the servicer, never by the node


@dataclass(frozen=True)
class Welcome:
    run_id: str
    model_id: str
    schema_digest: str
    current_round: int
    session: str
    heartbeat_seconds: float
    data_info_json: bytes


@dataclass(frozen=True)
class OutgoingInstruction:
    """One instruction for one node; ``payload`` is the safetensors model."""

    instruction_id: str
    run_id: str
    round: int
    kind: InstructionKind
    config: Mapping[str, Scalar]
    seed: int
    payload: bytes | memoryview  # read-only bytes-like (the bulk lane's payloads are memoryviews)
    payload_digest: str  # BLAKE3, see core.digests.payload_digest
    ledger_head: str = ""  # hash of the ledger's latest entry ("" : the server keeps none)
    ledger_round: int = 0


@dataclass(frozen=True)
class IncomingResult:
    """A node's answer; ``payload`` (a delta) is empty for evaluate results."""

    session: str
    instruction_id: str
    round: int
    num_examples: int
    loss: float = float("nan")
    metrics: Mapping[str, float] = field(default_factory=dict)
    payload: bytes | memoryview = b""
    run_id: str = ""  # the run the instruction came from; empty skips the check
    signature: bytes = b""  # the node's Ed25519 signature over its update (fit results)
    # BLAKE3 of ``payload`` when already known: the sender's, or the one the receiver
    # checked on arrival (saves hashing the payload a second time on either side)
    payload_digest: str = ""


@dataclass(frozen=True)
class HeartbeatInfo:
    current_round: int
    run_finished: bool
    ledger_head: str = ""
    ledger_round: int = 0


@dataclass(frozen=True)
class LedgerHeaders:
    """Canonical JSON headers of consecutive ledger entries, and whether more follow."""

    headers: tuple[bytes, ...]
    more: bool


@dataclass(frozen=True)
class ProofInfo:
    """A node's contribution to a round and its Merkle inclusion proof (``included``
    False: the round holds none of this node's)."""

    included: bool
    contribution: bytes = b""
    index: int = 0
    tree_size: int = 0
    path: tuple[bytes, ...] = ()


class FleetHandler(Protocol):
    """Server-side logic behind the servicer. ``peer`` is the node id proven by the
    client certificate (``None`` with --insecure). Raise potluck errors; the servicer
    maps them to status codes."""

    max_payload_bytes: int

    def join(self, info: JoinInfo, peer: str | None) -> Welcome: ...

    def next_instruction(self, session: str, wait: float, peer: str | None) -> OutgoingInstruction | None: ...

    def pulled_payload(self, session: str, instruction_id: str, peer: str | None) -> bytes | memoryview: ...

    def allows(self, peer: str) -> bool:
        """Whether the node with this proven identity may call at all (the allow-list):
        asked first on every call, before the call holds anything."""
        ...

    def check_result(self, session: str, instruction_id: str, rnd: int, run_id: str, peer: str | None) -> int:
        """Raise what :meth:`submit` would for a result with this header (before its payload
        moves); else the largest payload, bytes, that the result's instruction expects."""
        ...

    def submit(self, result: IncomingResult, peer: str | None) -> bool:
        """Accept a result; True if it had been accepted before (a duplicate)."""
        ...

    def heartbeat(self, session: str, peer: str | None) -> HeartbeatInfo: ...

    def leave(self, session: str, reason: str, peer: str | None) -> None: ...

    def count_refusal(self, reason: str) -> None:
        """Count a message the servicer refused before it reached the handler (malformed,
        identity, payload_<reason>, bulk_*): a metric's label, nothing is raised."""
        ...


class LedgerHandler(Protocol):
    """Server-side ledger queries behind the servicer (the FleetPool serves both).

    ``head`` is what instructions and heartbeats carry; ``seen`` records the head a node
    reports it has verified. Raise potluck errors: ``LedgerError`` for a head that is
    not in the ledger or a round that is not committed.
    """

    def ledger_head(self) -> tuple[int, str] | None: ...

    def ledger_since(self, session: str, head: str, limit: int, peer: str | None) -> LedgerHeaders: ...

    def ledger_proof(self, session: str, rnd: int, peer: str | None) -> ProofInfo: ...

    def ledger_seen(self, session: str, head: str, peer: str | None) -> None: ...
