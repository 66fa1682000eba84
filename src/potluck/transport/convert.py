"""Domain ↔ wire, in symmetric ``to_proto`` / ``from_proto`` pairs: the one place that
turns protobuf messages into potluck's types (``fleet_messages.py``) and back.

Parameters are not converted here: they travel as safetensors chunks (``chunks.py``)
or over the bulk lane (``bulk/``) after a header made by these functions. Requests
that carry only a session and a number are built where they are sent.

Every function raises :class:`WireError` (a :class:`~potluck.core.errors.ParamsError`)
for content the wire cannot carry or that makes no sense, never protobuf's own
``ValueError`` or ``UnicodeEncodeError``:

=====================  ==========================================================
config ``int`` values  must fit the wire's ``sint64``: −2⁶³ … 2⁶³ − 1
rounds, ports, counts  must fit their field: ``uint32`` (rounds, cpus, gpus, ports)
                       or ``uint64`` (sizes, seeds, examples, indexes), never < 0
``str`` values, names  must be encodable as UTF-8 (no lone surrogates)
metric names           1–128 characters
=====================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from potluck.core.digests import payload_digest
from potluck.core.errors import ParamsError
from potluck.core.messages import ConfigDict, Scalar
from potluck.transport.fleet_messages import (
    PROTOCOL,
    HeartbeatInfo,
    IncomingResult,
    InstructionKind,
    JoinInfo,
    LedgerHeaders,
    OutgoingInstruction,
    ProofInfo,
    Welcome,
)
from potluck.transport.revocation import CertificateStamp
from potluck.transport.v1 import fleet_pb2 as pb

M = TypeVar("M")

SINT64_MIN, SINT64_MAX = -(2**63), 2**63 - 1
MAX_METRIC_NAME = 128


class WireError(ParamsError):
    """A message is well-formed protobuf but its content is invalid."""


def _check_text(text: str, what: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise WireError(f"{what} {text[:40]!r} is not valid UTF-8 text ({exc.reason})") from None
    return text


def scalar_to_proto(value: Scalar) -> pb.Scalar:
    if isinstance(value, bool):
        return pb.Scalar(bool_value=value)
    if isinstance(value, int):
        if not SINT64_MIN <= value <= SINT64_MAX:
            shown = str(value) if value.bit_length() <= 128 else f"a {value.bit_length()}-bit integer"
            raise WireError(f"config integers must be within −2**63 … 2**63 − 1 (sint64), got {shown}")
        return pb.Scalar(int_value=value)
    if isinstance(value, float):
        return pb.Scalar(float_value=value)
    if isinstance(value, str):
        return pb.Scalar(string_value=_check_text(value, "config string"))
    raise WireError(f"config values must be bool, int, float or str, got {type(value).__name__}")


def scalar_from_proto(message: pb.Scalar) -> Scalar:
    kind = message.WhichOneof("kind")
    if kind is None:
        raise WireError("a config value is empty")
    value: Scalar = getattr(message, kind)
    return value


def config_to_proto(config: ConfigDict) -> dict[str, pb.Scalar]:
    out = {}
    for key, value in config.items():
        name = _check_text(str(key), "config key")
        try:
            out[name] = scalar_to_proto(value)
        except WireError as exc:
            raise WireError(f"config value {name[:40]!r}: {exc}") from None
    return out


def config_from_proto(config: Mapping[str, pb.Scalar]) -> dict[str, Scalar]:
    out = {}
    for key, value in config.items():
        try:
            out[key] = scalar_from_proto(value)
        except WireError as exc:
            raise WireError(f"config value {key[:40]!r}: {exc}") from None
    return out


def _metric_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > MAX_METRIC_NAME:
        raise WireError(f"metric name {str(name)[:40]!r} must be 1–{MAX_METRIC_NAME} characters")
    return _check_text(name, "metric name")


def metrics_to_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics for a ``map<string, double>``: names as :func:`metrics_from_proto` wants them,
    values anything ``float()`` takes that is a real number (NaN and Inf are kept)."""
    out = {}
    for name, value in metrics.items():
        key = _metric_name(name)
        if isinstance(value, (str, bytes, complex)):
            raise WireError(f"metric {key[:40]!r} must be a number, got {type(value).__name__}")
        try:
            out[key] = float(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise WireError(f"metric {key[:40]!r} must be a number: {exc}") from None
    return out


def metrics_from_proto(metrics: Mapping[str, float]) -> dict[str, float]:
    """Metrics as floats; NaN/Inf metrics are kept (a loss may be NaN), names must be sane."""
    return {_metric_name(name): float(value) for name, value in metrics.items()}


# --- fleet messages: a pair per domain type (payloads travel apart, see chunks.py) ---

_KIND_TO_PROTO = {"fit": pb.FIT, "evaluate": pb.EVALUATE, "exchange": pb.EXCHANGE}
_KIND_FROM_PROTO: dict[int, InstructionKind] = {v: k for k, v in _KIND_TO_PROTO.items()}  # type: ignore[misc]


def build_message(cls: Callable[..., M], what: str, **fields: Any) -> M:
    """``cls(**fields)``; protobuf's ValueError/TypeError (an int out of its field's range,
    a lone surrogate, a wrong type) as a WireError naming ``what``."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as exc:
        raise WireError(f"{what} cannot be sent: {exc}") from None


def join_to_proto(info: JoinInfo) -> pb.JoinRequest:
    """The node's join request; ``certificate`` is never sent (the server reads it)."""
    resources = build_message(pb.Resources, "join resources", cpus=info.cpus, memory_bytes=info.memory_bytes, gpus=info.gpus)
    return build_message(pb.JoinRequest, f"join of node {info.node_id[:40]!r}", node_id=info.node_id,
                  task_name=info.task_name, task_version=info.task_version, schema_digest=info.schema_digest,
                  num_examples=info.num_examples, protocol=PROTOCOL, resources=resources,
                  signing_key=info.public_key)


def join_from_proto(request: pb.JoinRequest, certificate: CertificateStamp | None = None) -> JoinInfo:
    """``certificate``: of the certificate the node presented (the servicer's, never the node's word)."""
    r = request.resources
    return JoinInfo(node_id=request.node_id, task_name=request.task_name, schema_digest=request.schema_digest,
                    num_examples=request.num_examples, task_version=request.task_version, cpus=r.cpus,
                    memory_bytes=r.memory_bytes, gpus=r.gpus, public_key=request.signing_key,
                    certificate=certificate)


def welcome_to_proto(w: Welcome, bulk_port: int = 0) -> pb.JoinReply:
    return build_message(pb.JoinReply, "join reply", run_id=w.run_id, model_id=w.model_id, schema_digest=w.schema_digest,
                  current_round=w.current_round, session=w.session, heartbeat_seconds=w.heartbeat_seconds,
                  data_info_json=w.data_info_json, bulk_port=bulk_port)


def welcome_from_proto(r: pb.JoinReply) -> Welcome:
    return Welcome(r.run_id, r.model_id, r.schema_digest, r.current_round, r.session, r.heartbeat_seconds,
                   r.data_info_json)


def instruction_to_proto(ins: OutgoingInstruction) -> pb.InstructionHeader:
    """The header announcing ``ins``'s payload (its size and digest); the payload follows apart."""
    return build_message(pb.InstructionHeader, f"instruction {ins.instruction_id}", instruction_id=ins.instruction_id,
                  run_id=ins.run_id, round=ins.round, kind=_KIND_TO_PROTO[ins.kind], config=config_to_proto(ins.config),
                  seed=ins.seed, params_size=len(ins.payload), params_blake3=ins.payload_digest,
                  ledger_head=ins.ledger_head, ledger_round=ins.ledger_round)


def instruction_from_proto(h: pb.InstructionHeader, payload: bytes | memoryview) -> OutgoingInstruction:
    """The instruction ``h`` announced, with the ``payload`` received (and checked) for it."""
    if h.kind not in _KIND_FROM_PROTO:
        raise WireError(f"instruction kind {h.kind} is unknown to this node; upgrade potluck")
    return OutgoingInstruction(h.instruction_id, h.run_id, h.round, _KIND_FROM_PROTO[h.kind],
                               config_from_proto(h.config), h.seed, payload, h.params_blake3, h.ledger_head,
                               h.ledger_round)


def result_to_proto(result: IncomingResult) -> pb.ResultHeader:
    """The header announcing ``result``'s payload; its BLAKE3 is hashed here unless known."""
    digest = result.payload_digest or payload_digest(result.payload)
    return build_message(pb.ResultHeader, f"result for {result.instruction_id}", session=result.session,
                  instruction_id=result.instruction_id, round=result.round, num_examples=result.num_examples,
                  loss=result.loss, metrics=metrics_to_proto(result.metrics), run_id=result.run_id,
                  params_size=len(result.payload), params_blake3=digest, signature=result.signature)


def result_from_proto(h: pb.ResultHeader, payload: bytes | memoryview) -> IncomingResult:
    """The result ``h`` announced with its ``payload``, whose digest the receiver checked on arrival."""
    return IncomingResult(session=h.session, instruction_id=h.instruction_id, round=h.round,
                          num_examples=h.num_examples, loss=h.loss, metrics=metrics_from_proto(h.metrics),
                          payload=payload, run_id=h.run_id, signature=h.signature,
                          payload_digest=h.params_blake3 if payload else "")


def heartbeat_to_proto(info: HeartbeatInfo) -> pb.HeartbeatReply:
    return build_message(pb.HeartbeatReply, "heartbeat reply", current_round=info.current_round,
                  run_finished=info.run_finished, ledger_head=info.ledger_head, ledger_round=info.ledger_round)


def heartbeat_from_proto(r: pb.HeartbeatReply) -> HeartbeatInfo:
    return HeartbeatInfo(r.current_round, r.run_finished, r.ledger_head, r.ledger_round)


def ledger_headers_to_proto(found: LedgerHeaders) -> pb.LedgerSinceReply:
    return build_message(pb.LedgerSinceReply, "ledger headers", headers=list(found.headers), more=found.more)


def ledger_headers_from_proto(r: pb.LedgerSinceReply) -> LedgerHeaders:
    return LedgerHeaders(tuple(r.headers), r.more)


def proof_to_proto(proof: ProofInfo) -> pb.InclusionProofReply:
    return build_message(pb.InclusionProofReply, "inclusion proof", included=proof.included, contribution=proof.contribution,
                  index=proof.index, tree_size=proof.tree_size, path=list(proof.path))


def proof_from_proto(r: pb.InclusionProofReply) -> ProofInfo:
    return ProofInfo(r.included, r.contribution, r.index, r.tree_size, tuple(r.path))
