"""Signed updates and the ledger calls at the wire: each refusal has its own error and count."""

from __future__ import annotations

import json

import pytest

from fleet_kit import MODEL, client, delta, dispatch, serve_fleet
from potluck.core.digests import settings_digest
from potluck.core.errors import AccessDenied, LedgerError, NodeResultInvalid, SignatureError
from potluck.core.messages import FitResult
from potluck.core.params import Params
from potluck.core.records import RoundProvenance, RoundRecord
from potluck.ledger.chain import Ledger, RunStart, entry_hash
from potluck.ledger.merkle import verify_inclusion
from potluck.ledger.signing import derived_key, public_bytes, sign_update
from potluck.runtime.collect import contribution
from potluck.transport.fleet_messages import IncomingResult, JoinInfo

KEY_A = derived_key(0, "a")


@pytest.fixture
def signed_fleet(tls):
    with serve_fleet(tls, signed=True) as served:
        yield served


def join(c, node="a", key=KEY_A) -> str:
    return c.join(JoinInfo(node, "m", MODEL.schema_digest, 10, public_key=public_bytes(key) if key else b"")).session


def signed_push(c, session, ins, key=KEY_A, *, examples=10, value=1.0, run_id=None):
    update = Params.decode(delta(value))
    signature = sign_update(key, run_id or ins.run_id, ins.round, update, examples, ins.config).signature
    return c.push(IncomingResult(session, ins.instruction_id, ins.round, examples, payload=update.encode(),
                                 run_id=ins.run_id, signature=signature))


def test_a_signed_update_is_accepted_and_carries_its_signature(signed_fleet, tls):
    pool, address = signed_fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"])
    assert signed_push(c, session, c.pull(session, 5)) is False
    t.join(60)
    (result,) = outcomes
    assert isinstance(result, FitResult) and result.signature.public_key == public_bytes(KEY_A)


@pytest.mark.parametrize(("tamper", "reason", "message"), [
    ({"examples": 11}, "bad_signature", "does not verify with the key it registered"),   # claims more weight
    ({"run_id": "another-run"}, "bad_signature", "does not verify"),                   # replayed from another run
    ({"key": derived_key(0, "b")}, "bad_signature", "does not verify"),               # signed by another key
])
def test_a_bad_signature_is_refused_at_the_wire_and_counted(signed_fleet, tls, tamper, reason, message):
    pool, address = signed_fleet
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"])
    ins = c.pull(session, 5)
    examples = tamper.get("examples", 10)
    update = Params.decode(delta())
    signed = sign_update(tamper.get("key", KEY_A), tamper.get("run_id", ins.run_id), ins.round, update, 10, ins.config)
    with pytest.raises(SignatureError, match=message):
        c.push(IncomingResult(session, ins.instruction_id, ins.round, examples, payload=update.encode(),
                              run_id=ins.run_id, signature=signed.signature))
    t.join(60)
    assert isinstance(outcomes[0], NodeResultInvalid) and pool.rejections[reason] == 1  # counted "rejected" in the round


def test_unsigned_updates_and_keyless_nodes_are_refused(signed_fleet, tls):
    pool, address = signed_fleet
    with pytest.raises(SignatureError, match="registered no signing key; this server requires signed updates"):
        join(client(tls, address), key=None)
    c = client(tls, address)
    session = join(c)
    t, outcomes = dispatch(pool, ["a"])
    ins = c.pull(session, 5)
    with pytest.raises(SignatureError, match="is not signed"):
        c.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=delta(), run_id=ins.run_id))
    t.join(60)
    assert pool.rejections["no_key"] == 1 and pool.rejections["unsigned"] == 1


def test_a_second_key_for_the_same_certificate_is_refused(signed_fleet, tls):
    pool, address = signed_fleet
    join(client(tls, address))
    with pytest.raises(AccessDenied, match="a new key needs a new certificate"):
        join(client(tls, address), key=derived_key(0, "stolen"))
    assert pool.rejections["key_changed"] == 1
    join(client(tls, address))  # the registered key still joins


def test_the_ledger_calls_serve_headers_and_own_proofs_only(tls):
    with serve_fleet(tls, signed=True) as (pool, address):
        ledger = Ledger(derived_key(0, "server"), RunStart("m", MODEL.schema_digest, "fedavg", {}, {}, "0" * 64),
                        run_id="r1")
        pool.ledger = ledger
        ledger.advance(ledger.seal(RoundRecord(0, 0, 0, 0.0, MODEL.digest), MODEL.digest, "0" * 64))
        c = client(tls, address)
        session = join(c)
        t, outcomes = dispatch(pool, ["a"])
        ins = c.pull(session, 5)
        assert (ins.ledger_round, ins.ledger_head) == (0, ledger.head().hash)  # every instruction names the head
        signed_push(c, session, ins)
        t.join(60)
        record = RoundRecord(1, 1, 1, 0.1, MODEL.digest, metrics={"loss": 0.5}, provenance=RoundProvenance(
            settings_digest(ins.config), (contribution(outcomes[0]),)))
        ledger.advance(ledger.seal(record, MODEL.digest, "0" * 64))

        assert c.heartbeat(session).ledger_head == ledger.head().hash
        found = c.ledger_since(session, ins.ledger_head)
        assert [json.loads(h)["round"] for h in found.headers] == [1] and not found.more
        assert entry_hash(json.loads(found.headers[0])) == ledger.head().hash
        proof = c.inclusion_proof(session, 1)
        root = bytes.fromhex(json.loads(found.headers[0])["contributions_root"])
        assert proof.included and verify_inclusion(proof.contribution, proof.index, proof.tree_size, proof.path, root)
        assert json.loads(proof.contribution)["node"] == "a"
        b = client(tls, address, "b")
        assert not b.inclusion_proof(join(b, "b", derived_key(0, "b")), 1).included  # only its own
        with pytest.raises(LedgerError, match="is not an entry of run r1's ledger"):
            c.ledger_since(session, "ab" * 32)
        with pytest.raises(LedgerError, match="round 7 is not committed"):
            c.inclusion_proof(session, 7)


def test_a_new_key_is_accepted_with_a_newly_issued_certificate(signed_fleet, tls, tmp_path):
    import shutil

    from potluck.transport.certs import issue_node

    pool, address = signed_fleet
    folder = tmp_path / "tls"
    shutil.copytree(tls / "tls", folder)  # re-issue in a copy: other tests keep b's certificate
    first, second = derived_key(1, "b"), derived_key(2, "b")
    join(client(tls, address, "b"), "b", first)
    issue_node(folder, "b")  # the CA's operator issues b a new certificate
    with pytest.raises(AccessDenied):
        join(client(tls, address, "b"), "b", second)  # the old certificate cannot bring a new key
    join(client(tmp_path, address, "b"), "b", second)
    assert pool.keys.key_of("b") == public_bytes(second)
