"""Every ``to_proto`` / ``from_proto`` pair in convert.py: a domain value survives the
trip through protobuf bytes unchanged, and what the wire cannot carry is a WireError
naming the message, never protobuf's ValueError or TypeError."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from potluck.core.digests import payload_digest
from potluck.transport import convert
from potluck.transport.convert import WireError
from potluck.transport.fleet_messages import (
    PROTOCOL,
    HeartbeatInfo,
    IncomingResult,
    JoinInfo,
    LedgerHeaders,
    OutgoingInstruction,
    ProofInfo,
    Welcome,
)
from potluck.transport.revocation import CertificateStamp
from potluck.transport.v1 import fleet_pb2 as pb

FUZZ = settings(max_examples=60, deadline=None, derandomize=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
U32, U64 = st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1)
DIGEST = st.text("0123456789abcdef", min_size=64, max_size=64)
REAL = st.floats(allow_nan=False)
METRICS = st.dictionaries(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12), REAL,
                          max_size=4)
SCALAR = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), REAL, TEXT)


def trip(message, parse):
    """``message`` as bytes and parsed back: what the other side sees."""
    return parse(type(message).FromString(message.SerializeToString()))


@FUZZ
@given(st.builds(JoinInfo, node_id=TEXT, task_name=TEXT, schema_digest=TEXT, num_examples=U64, task_version=TEXT,
                 cpus=U32, memory_bytes=U64, gpus=U32, public_key=st.binary(max_size=32)))
def test_join(info):
    request = convert.join_to_proto(info)
    assert request.protocol == PROTOCOL
    assert trip(request, convert.join_from_proto) == info
    stamp = CertificateStamp(datetime(2026, 1, 1, tzinfo=timezone.utc), 7, "ab" * 32)
    assert trip(request, lambda r: convert.join_from_proto(r, stamp)).certificate == stamp


@FUZZ
@given(st.builds(Welcome, run_id=TEXT, model_id=TEXT, schema_digest=TEXT, current_round=U32, session=TEXT,
                 heartbeat_seconds=REAL, data_info_json=st.binary(max_size=64)), U32)
def test_welcome(welcome, bulk_port):
    reply = convert.welcome_to_proto(welcome, bulk_port)
    assert trip(reply, convert.welcome_from_proto) == welcome and reply.bulk_port == bulk_port


@FUZZ
@given(st.builds(OutgoingInstruction, instruction_id=TEXT, run_id=TEXT, round=U32,
                 kind=st.sampled_from(["fit", "evaluate", "exchange"]),
                 config=st.dictionaries(TEXT, SCALAR, max_size=4), seed=U64, payload=st.binary(max_size=64),
                 payload_digest=DIGEST, ledger_head=TEXT, ledger_round=U32))
def test_instruction(ins):
    header = convert.instruction_to_proto(ins)
    assert header.params_size == len(ins.payload)
    assert trip(header, lambda h: convert.instruction_from_proto(h, ins.payload)) == ins


@FUZZ
@given(st.builds(IncomingResult, session=TEXT, instruction_id=TEXT, round=U32, num_examples=U64, loss=st.floats(),
                 metrics=METRICS, payload=st.binary(min_size=1, max_size=64), run_id=TEXT,
                 signature=st.binary(max_size=64)))
def test_result(result):
    header = convert.result_to_proto(result)
    assert header.params_blake3 == payload_digest(result.payload)  # hashed when the sender did not know it
    back = trip(header, lambda h: convert.result_from_proto(h, result.payload))
    same_loss = math.isnan(back.loss) if math.isnan(result.loss) else back.loss == result.loss
    assert same_loss and back.payload_digest == header.params_blake3
    assert (back.session, back.instruction_id, back.round, back.num_examples, dict(back.metrics), back.run_id,
            back.signature) == (result.session, result.instruction_id, result.round, result.num_examples,
                                dict(result.metrics), result.run_id, result.signature)


def test_an_evaluate_result_without_payload_carries_no_digest():
    result = IncomingResult("s", "i", 3, 10, loss=0.5, metrics={"accuracy": 0.9})
    back = trip(convert.result_to_proto(result), lambda h: convert.result_from_proto(h, b""))
    assert back == result


@FUZZ
@given(st.builds(HeartbeatInfo, current_round=U32, run_finished=st.booleans(), ledger_head=TEXT, ledger_round=U32))
def test_heartbeat(info):
    assert trip(convert.heartbeat_to_proto(info), convert.heartbeat_from_proto) == info


@FUZZ
@given(st.builds(LedgerHeaders, headers=st.lists(st.binary(max_size=40), max_size=4).map(tuple), more=st.booleans()))
def test_ledger_headers(found):
    assert trip(convert.ledger_headers_to_proto(found), convert.ledger_headers_from_proto) == found


@FUZZ
@given(st.builds(ProofInfo, included=st.booleans(), contribution=st.binary(max_size=40), index=U64, tree_size=U64,
                 path=st.lists(st.binary(min_size=32, max_size=32), max_size=5).map(tuple)))
def test_proof(proof):
    assert trip(convert.proof_to_proto(proof), convert.proof_from_proto) == proof


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: convert.join_to_proto(JoinInfo("a", "m", "d", -1)), "join of node 'a' cannot be sent"),
        (lambda: convert.join_to_proto(JoinInfo("a", "m", "d", 1, cpus=2**32)), "join resources cannot be sent"),
        (lambda: convert.welcome_to_proto(Welcome("r", "m", "d", -1, "s", 1.0, b"")), "join reply cannot be sent"),
        (lambda: convert.instruction_to_proto(OutgoingInstruction("i7", "r", 2**32, "fit", {}, 0, b"", "d")),
         "instruction i7 cannot be sent"),
        (lambda: convert.instruction_to_proto(OutgoingInstruction("i7", "r", 1, "fit", {}, -5, b"", "d")),
         "instruction i7 cannot be sent"),
        (lambda: convert.result_to_proto(IncomingResult("s", "i9", -1, 1)), "result for i9 cannot be sent"),
        (lambda: convert.join_to_proto(JoinInfo("a\ud800", "m", "d", 1)), "cannot be sent"),
        (lambda: convert.heartbeat_to_proto(HeartbeatInfo(2**40, False)), "heartbeat reply cannot be sent"),
        (lambda: convert.proof_to_proto(ProofInfo(True, b"", index=-1)), "inclusion proof cannot be sent"),
        (lambda: convert.build_message(pb.LedgerSinceRequest, "ledger request", max_entries=-1),
         "ledger request cannot be sent"),
    ],
)
def test_what_the_wire_cannot_carry_is_a_wire_error(build, message):
    with pytest.raises(WireError, match=message):
        build()


def test_an_unknown_instruction_kind_is_refused_by_name():
    header = pb.InstructionHeader(instruction_id="i", kind=7)
    with pytest.raises(WireError, match="instruction kind 7 is unknown to this node; upgrade potluck"):
        convert.instruction_from_proto(header, b"")


def test_a_bad_metric_name_from_the_wire_is_a_wire_error():
    header = pb.ResultHeader(session="s", instruction_id="i", metrics={"": 1.0})
    with pytest.raises(WireError, match="metric name '' must be 1–128 characters"):
        convert.result_from_proto(header, b"")
