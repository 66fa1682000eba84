"""Whether a pushed result counts, checked in the order that costs least first.

The header (:meth:`ResultAdmission.admit`, under the pool's lock, before the payload
moves): the session and certificate identity, the run, that the instruction was given
in this run, to this node, for this round, and is still open. A repeat of an accepted
result is acknowledged and ignored. Then the payload (:meth:`ResultAdmission.judge`,
outside the lock: decoding can be slow): the example count, that it decodes, its
schema and finiteness, and the node's signature over the update with the key it
registered at join. A refused payload becomes a ``NodeResultInvalid`` outcome whose cause
is the specific error. Each refusal is counted by reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from potluck.backends.fleet.bounded import RejectionCounts
from potluck.backends.fleet.instructions import InstructionBook, OpenInstruction, Outcome
from potluck.backends.fleet.registry import NodeRegistry
from potluck.core.digests import update_digest, update_statement
from potluck.core.errors import (
    NodeError,
    NodeResultInvalid,
    ParamsError,
    PotluckError,
    SignatureError,
    UnexpectedResult,
    UnknownId,
)
from potluck.core.messages import EvaluateResult, FitResult, UpdateSignature
from potluck.core.params import Params, ParamsKind, SchemaEntry
from potluck.ledger.signing import check_signature
from potluck.runtime.pool import ExchangeReply
from potluck.transport.fleet_messages import IncomingResult

# What a result may carry beyond its update's own encoding: an exchange reply (secure
# aggregation's keys and shares, bytes per node of the round) and header slack.
EXCHANGE_BYTES = 16 * 2**20
HEADER_SLACK = 4096


def encoded_bytes(schema: tuple[SchemaEntry, ...]) -> int:
    """Bytes of the canonical encoding of a DELTA with ``schema`` (zeros are not touched:
    the arrays stay unallocated pages)."""
    arrays = {name: np.zeros(shape, np.dtype(dtype)) for name, shape, dtype in schema}
    return Params.from_arrays(arrays, ParamsKind.DELTA, copy=False).encoded_size


@dataclass(frozen=True)
class ResultHeader:
    """What a result says of itself before its payload is read."""

    session: str
    instruction_id: str
    round: int
    run_id: str  # "" skips the check

    @classmethod
    def of(cls, result: IncomingResult) -> ResultHeader:
        return cls(result.session, result.instruction_id, result.round, result.run_id)


@dataclass(frozen=True)
class Admitted:
    """A result whose header passed: the node it came from and the instruction it answers."""

    node_id: str
    instruction: OpenInstruction
    declared_examples: int  # what the node declared at join: its fit results may report no more


@dataclass(frozen=True)
class Refusal:
    """A payload check that failed: the reason it is counted under, and the error."""

    reason: str
    error: PotluckError


class ResultAdmission:
    """Checks results against the instructions handed out and the nodes' keys."""

    def __init__(self, *, run_id: str, update_schema: tuple[SchemaEntry, ...], require_signatures: bool,
                 registry: NodeRegistry, book: InstructionBook, rejections: RejectionCounts,
                 max_payload_bytes: int) -> None:
        self.run_id, self.update_schema = run_id, update_schema
        self.require_signatures = require_signatures
        self.registry, self.book, self.rejections = registry, book, rejections
        fit = encoded_bytes(update_schema) + HEADER_SLACK
        self.limits = {"fit": min(fit, max_payload_bytes), "evaluate": 0,
                       "exchange": min(EXCHANGE_BYTES, max_payload_bytes)}

    def payload_limit(self, admitted: Admitted | None) -> int:
        """The largest payload, bytes, a result for ``admitted`` may carry: what its
        instruction's kind makes (an update of this run's wire schema, an exchange reply,
        nothing for an evaluation); the largest of those for a repeat (None), which is
        acknowledged once it arrived."""
        return max(self.limits.values()) if admitted is None else self.limits[admitted.instruction.kind]

    def admit(self, header: ResultHeader, peer: str | None) -> Admitted | None:
        """The instruction a result may answer; None for a repeat of an accepted one;
        the specific error otherwise. Under the lock."""
        node = self.registry.node_for(header.session, peer)
        node_id = node.node_id
        if header.run_id and header.run_id != self.run_id:
            self.rejections.note("unknown_run")
            raise UnknownId(f"result is for run {header.run_id!r}; this server runs {self.run_id!r}")
        iid = header.instruction_id
        if iid in self.book.answered:
            return None
        why = self.book.closed.note(iid)
        if why is not None:
            self.rejections.note("late")
            raise UnexpectedResult(f"instruction {iid} no longer takes results: {why}")
        ins = self.book.open.get(iid)
        if ins is None:
            self.rejections.note("unknown_instruction")
            raise UnknownId(f"no instruction {iid!r} was given in this run")
        if ins.node_id != node_id:
            self.rejections.note("wrong_node")
            raise UnexpectedResult(f"instruction {iid} was given to node {ins.node_id!r}, not {node_id!r}")
        if header.round != ins.round:
            self.rejections.note("wrong_round")
            raise UnexpectedResult(f"result says round {header.round}, its instruction was for round {ins.round}")
        return Admitted(node_id, ins, node.info.num_examples)

    def judge(self, result: IncomingResult, admitted: Admitted, key: bytes | None) -> Outcome:
        """The outcome ``result`` makes: a result, or ``NodeResultInvalid`` for a refused payload.
        ``key`` is the node's registered signing key. Outside the lock."""
        node_id, ins = admitted.node_id, admitted.instruction
        if ins.kind == "exchange":  # a protocol reply: opaque bytes for the coordinator's driver
            return ExchangeReply(node_id, bytes(result.payload))  # protocol messages are parsed as bytes (JSON)
        if ins.kind == "evaluate":  # 0 examples: the node has no validation split
            if result.num_examples > self.registry.rules.max_examples:
                return self._invalid_result(node_id, Refusal("bad_examples", ParamsError(
                    f"evaluation reports {result.num_examples:,} examples, over the server's {self.registry.rules.max_examples:,}")))
            return EvaluateResult(ins.round, node_id, result.loss, result.num_examples, dict(result.metrics))
        update = self._update(result, admitted)
        if isinstance(update, Refusal):
            return self._invalid_result(node_id, update)
        signature: UpdateSignature | None = None
        if result.signature or self.require_signatures:
            checked = self._signature(result, ins, update, key)
            if isinstance(checked, Refusal):
                return self._invalid_result(node_id, checked)
            signature = checked
        if result.num_examples > admitted.declared_examples:  # after the signature: a forged count is that
            return self._invalid_result(node_id, Refusal("bad_examples", ParamsError(
                f"result reports {result.num_examples:,} examples; its node declared {admitted.declared_examples:,} "
                "at join, and a result may weigh as many at most")))
        return FitResult(ins.round, node_id, update, result.num_examples, dict(result.metrics), signature)

    def _update(self, result: IncomingResult, admitted: Admitted) -> Params | Refusal:
        node_id = admitted.node_id
        if result.num_examples <= 0:
            return Refusal("bad_examples", ParamsError(f"result reports {result.num_examples} examples"))
        try:
            params = Params.decode(result.payload)
        except ParamsError as exc:
            return Refusal("undecodable", exc)
        try:
            params.check_schema(self.update_schema, what=f"update from {node_id}")
        except ParamsError as exc:
            return Refusal("result_schema", exc)
        try:
            params.check_finite(what=f"update from {node_id}")
        except ParamsError as exc:
            return Refusal("non_finite", exc)
        return params.with_kind(ParamsKind.DELTA)

    def _signature(self, result: IncomingResult, ins: OpenInstruction, update: Params,
                   key: bytes | None) -> UpdateSignature | Refusal:
        canonical = bool(result.payload_digest) and update.encode() is result.payload  # no copy: a check
        digest = result.payload_digest if canonical else update_digest(update)  # hashed on arrival already
        statement = update_statement(self.run_id, ins.round, digest, result.num_examples, ins.settings)
        try:
            return check_signature(ins.node_id, key, result.signature, statement)
        except SignatureError as exc:
            return Refusal("bad_signature" if result.signature and key else "unsigned", exc)

    def _invalid_result(self, node_id: str, refusal: Refusal) -> NodeError:
        self.rejections.note(refusal.reason)
        error = NodeResultInvalid(node_id, f"result refused: {refusal.error}")
        error.__cause__ = refusal.error
        return error

    def record(self, instruction_id: str, outcome: Outcome) -> bool:
        """Deliver a judged result's outcome; True if the instruction had been answered
        meanwhile (a duplicate). A refused one raises its specific error. Under the lock."""
        if instruction_id in self.book.answered or instruction_id not in self.book.open:
            return instruction_id in self.book.answered
        refused = isinstance(outcome, NodeError)
        self.book.settle(instruction_id, outcome, "its result was refused" if refused else None)
        for holder in self.registry.entries():
            holder.pulled.pop(instruction_id, None)
        if isinstance(outcome, NodeError):
            raise outcome.__cause__ if isinstance(outcome.__cause__, PotluckError) else outcome
        return False
