"""Revoked certificates and key rotation (transport/revocation.py, ledger/signing.NodeKeys).

Each attack is reproduced against a served fleet (a revoked node calling again, on gRPC
and on the bulk lane; an older certificate replacing a node's signing key), refused with
its specific error and counted, and then a well-behaved node completes a round.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from fleet_kit import MODEL, client, delta, dispatch, serve_fleet, well_behaved_round
from potluck.backends.fleet import FleetPool
from potluck.cli.main import app
from potluck.core.errors import AccessDenied, ConfigError
from potluck.core.messages import FitInstruction, FitResult
from potluck.core.params import Params, ParamsKind
from potluck.ledger.signing import NodeKeys, StaleCertificate, derived_key, public_bytes, sign_update
from potluck.transport.certs import CRL_NAME, PemBundle, init_ca, issue_node, issue_server, load_pem_bundle
from potluck.transport.fleet_messages import IncomingResult, JoinInfo
from potluck.transport.revocation import (
    CertificateRevoked,
    Revocations,
    reload_on_sighup,
    revoke_node,
    stamp_of,
)
from potluck.transport.server import start_server
from potluck.transport.tls_files import CertificateError

BIG = Params.from_arrays({"w": np.arange(2**19, dtype=np.float32)})  # 2 MiB: travels over the bulk lane


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """``root/tls``: a CA, a server certificate for 127.0.0.1, nodes a and b; ``root/other``: another CA."""
    init_ca(tmp_path / "tls")
    issue_server(tmp_path / "tls", ["127.0.0.1"])
    for node in ("a", "b"):
        issue_node(tmp_path / "tls", node)
    init_ca(tmp_path / "other")
    issue_node(tmp_path / "other", "a")
    return tmp_path


def pem(root: Path, node: str) -> bytes:
    return (root / "tls" / "nodes" / f"{node}.crt").read_bytes()


def serial(root: Path, node: str) -> int:
    return x509.load_pem_x509_certificate(pem(root, node)).serial_number


def join(c, node: str, schema: str = MODEL.schema_digest, key: bytes = b"") -> str:  # type: ignore[no-untyped-def]
    return c.join(JoinInfo(node, "m", schema, 10, public_key=key)).session


# --- potluck certs revoke ------------------------------------------------------------

def certs(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["certs", *args])


def test_revoke_writes_a_crl_signed_by_the_ca_and_is_idempotent(root):
    tls = str(root / "tls")
    result = certs("revoke", "a", "--tls-dir", tls)
    assert result.exit_code == 0, result.output
    assert f"serial {serial(root, 'a'):x} revoked" in result.output and "potluck certs issue node a" in result.output
    ca = x509.load_pem_x509_certificate((root / "tls" / "ca.crt").read_bytes())
    crl = x509.load_pem_x509_crl((root / "tls" / CRL_NAME).read_bytes())
    assert crl.is_signature_valid(ca.public_key()) and crl.issuer == ca.subject  # type: ignore[arg-type]
    assert crl.get_revoked_certificate_by_serial_number(serial(root, "a")) is not None
    assert crl.get_revoked_certificate_by_serial_number(serial(root, "b")) is None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    before = (root / "tls" / CRL_NAME).read_bytes()
    again = certs("revoke", "a", "--tls-dir", tls)
    assert again.exit_code == 0 and "was already revoked" in again.output
    assert (root / "tls" / CRL_NAME).read_bytes() == before
    assert certs("revoke", "b", "--tls-dir", tls).exit_code == 0  # a second one: both listed, the number grows
    crl = x509.load_pem_x509_crl((root / "tls" / CRL_NAME).read_bytes())
    assert {r.serial_number for r in crl} == {serial(root, "a"), serial(root, "b")}
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    shown = certs("show", "--tls-dir", tls)
    assert shown.exit_code == 0 and shown.output.count("(REVOKED: on crl.pem)") == 2
    issue_node(root / "tls", "a")  # a's new certificate is not revoked
    assert certs("show", "--tls-dir", tls).output.count("(REVOKED: on crl.pem)") == 1


def test_revoking_an_unknown_node_or_a_foreign_certificate_says_why(root):
    tls = str(root / "tls")
    result = certs("revoke", "ghost", "--tls-dir", tls)
    assert result.exit_code == 1
    assert "no certificate for node 'ghost' to revoke" in result.output and "issued certificates for: a, b" in result.output
    assert certs("revoke", "-bad", "--tls-dir", tls).exit_code == 2  # not a node id: a usage error
    foreign = certs("revoke", "a", "--cert", str(root / "other" / "nodes" / "a.crt"), "--tls-dir", tls)
    assert foreign.exit_code == 1 and "was not issued by the CA" in foreign.output
    other_node = certs("revoke", "a", "--cert", str(root / "tls" / "nodes" / "b.crt"), "--tls-dir", tls)
    assert other_node.exit_code == 1 and "not of node 'a'" in other_node.output
    no_ca = certs("revoke", "a", "--tls-dir", str(root / "nowhere"))
    assert no_ca.exit_code == 1 and "potluck certs init" in no_ca.output
    assert not (root / "tls" / CRL_NAME).exists()
    with pytest.raises(ConfigError):
        revoke_node(root / "tls", "../a")


# --- the list in force ---------------------------------------------------------------

def test_the_list_is_reread_when_the_file_changes(root, caplog):
    ca = (root / "tls" / "ca.crt").read_bytes()
    revocations = Revocations(root / "tls" / CRL_NAME, ca)  # no file yet: nothing revoked
    revocations.check_pem(pem(root, "a"))
    revoke_node(root / "tls", "a")
    with pytest.raises(CertificateRevoked, match=r"certificate of 'a' \(serial [0-9a-f]+\) was revoked"):
        revocations.check_pem(pem(root, "a"))  # no reload asked for: the change is seen
    revocations.check_pem(pem(root, "b"))
    der = x509.load_pem_x509_certificate(pem(root, "a")).public_bytes(serialization.Encoding.DER)
    with pytest.raises(CertificateRevoked):
        revocations.check_der(der)
    # A file that does not verify (another CA's CRL) is ignored: the list in force stays.
    revoke_node(root / "other", "a")
    shutil.copy(root / "other" / CRL_NAME, root / "tls" / CRL_NAME)
    with caplog.at_level(logging.ERROR, "potluck.transport.revocation"):
        with pytest.raises(CertificateRevoked):
            revocations.check_pem(pem(root, "a"))
    assert "is not signed by the project CA" in caplog.text and "the revocation list in force stays" in caplog.text
    (root / "tls" / CRL_NAME).unlink()  # removed: nothing is revoked
    revocations.check_pem(pem(root, "a"))


def test_a_crl_that_does_not_verify_stops_the_server_at_start(root):
    revoke_node(root / "other", "a")
    shutil.copy(root / "other" / CRL_NAME, root / "tls" / CRL_NAME)
    pool = FleetPool(run_id="r", model_id="m", schema=MODEL.schema, data_info_json=b"{}", require_signatures=False)
    with pytest.raises(CertificateError, match=r"crl.pem is not signed by the project CA"):
        start_server(pool, "127.0.0.1:0", load_pem_bundle(root / "tls", "server"))
    (root / "tls" / CRL_NAME).write_text("not a CRL")
    with pytest.raises(CertificateError, match="is not a PEM certificate revocation list"):
        start_server(pool, "127.0.0.1:0", load_pem_bundle(root / "tls", "server"))


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP here")
def test_sighup_reloads_the_list(root, caplog):
    revocations = Revocations(root / "tls" / CRL_NAME, (root / "tls" / "ca.crt").read_bytes())
    previous = signal.getsignal(signal.SIGHUP)
    restore = reload_on_sighup(revocations)
    try:
        with caplog.at_level(logging.INFO, "potluck.transport.revocation"):
            revoke_node(root / "tls", "b")
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 30
            while "reloaded: 1 certificates revoked" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)  # the handler runs in the main thread between bytecodes
        assert "reloaded: 1 certificates revoked" in caplog.text
    finally:
        restore()
    assert signal.getsignal(signal.SIGHUP) == previous
    with pytest.raises(CertificateRevoked):
        revocations.check_pem(pem(root, "b"))


# --- a revoked node on a served fleet --------------------------------------------------

def test_a_node_revoked_mid_run_is_refused_on_grpc_while_another_goes_on(root):
    with serve_fleet(root) as (pool, address):
        a = client(root, address, "a")
        session = join(a, "a")
        t, outcomes = dispatch(pool, ["a"])
        ins = a.pull(session, 5)
        assert a.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=delta())) is False
        t.join(5)
        assert isinstance(outcomes[0], FitResult)  # a completed a round before its revocation
        revoke_node(root / "tls", "a")  # the running server sees the new crl.pem at the next call
        for call in (lambda: a.heartbeat(session), lambda: a.pull(session, 0), lambda: join(client(root, address, "a"), "a")):
            with pytest.raises(CertificateRevoked, match="certificate of 'a' .* was revoked by the project CA"):
                call()
        assert pool.rejections["revoked"] == 3
        well_behaved_round(pool, root, address, "b")
        well_behaved_round(pool, root, address, "b")
        issue_node(root / "tls", "a")  # a new certificate lets the node back in
        well_behaved_round(pool, root, address, "a")


def test_a_node_revoked_mid_round_is_refused_on_the_bulk_lane_while_another_goes_on(root):
    pool = FleetPool(run_id="r", model_id="m", schema=BIG.schema, data_info_json=b"{}", heartbeat_seconds=1.0,
                     max_payload_bytes=4 * 2**20, require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", load_pem_bundle(root / "tls", "server"), bulk="127.0.0.1:0")
    try:
        address = f"127.0.0.1:{port}"
        nodes = {n: client(root, address, n) for n in ("a", "b")}
        sessions = {n: join(c, n, BIG.schema_digest) for n, c in nodes.items()}
        outcomes: list = []
        ins = [FitInstruction(1, n, BIG) for n in nodes]
        threading.Thread(target=lambda: outcomes.extend(pool.fit(ins, 60)), daemon=True).start()
        pulled = {n: c.pull(sessions[n], 5) for n, c in nodes.items()}  # over the lane: the lane's connections stay open
        assert server.bulk.transfers["get"] == 2
        revoke_node(root / "tls", "a")
        update = Params.from_arrays({"w": np.ones(2**19, np.float32)}, ParamsKind.DELTA).encode()
        with pytest.raises(CertificateRevoked, match="certificate of 'a' .* was revoked"):
            nodes["a"].push(IncomingResult(sessions["a"], pulled["a"].instruction_id, 1, 5, payload=update))
        assert pool.rejections["revoked"] == 1 and server.bulk.transfers["put"] == 0  # refused by the lane itself
        with pytest.raises(CertificateRevoked):  # a fresh connection to the lane: refused too
            nodes["a"].lane.get(sessions["a"], pulled["a"].instruction_id, len(pulled["a"].payload),
                                pulled["a"].payload_digest)
        assert nodes["b"].push(IncomingResult(sessions["b"], pulled["b"].instruction_id, 1, 5, payload=update)) is False
        assert server.bulk.transfers["put"] == 1
        deadline = time.monotonic() + 30
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.01)
        assert isinstance(outcomes[0], FitResult) and outcomes[0].node_id == "b"  # b's result counts; a's never will
    finally:
        server.stop(0)


# --- key rotation needs a newer certificate ------------------------------------------

def test_an_older_certificate_cannot_rotate_a_key_and_a_newer_one_can(root):
    old = root / "old"  # a copy of a's first certificate, e.g. from a decommissioned machine
    (old / "nodes").mkdir(parents=True)
    for name in ("ca.crt", "nodes/a.crt", "nodes/a.key"):
        shutil.copy(root / "tls" / name, old / name)
    issue_node(root / "tls", "a")  # the operator re-issued a's certificate
    assert stamp_of(pem(root, "a")) > stamp_of((old / "nodes" / "a.crt").read_bytes())
    first, stolen, rotated = (public_bytes(derived_key(0, k)) for k in ("first", "stolen", "rotated"))
    with serve_fleet(root, signed=True) as (pool, address):
        join(client(root, address, "a"), "a", key=first)  # registered with the newer certificate
        attacker = client(root, address, "a", folder="old")
        with pytest.raises(StaleCertificate, match=r"with an older one \(serial [0-9a-f]+, valid from"):
            join(attacker, "a", key=stolen)
        assert pool.keys.key_of("a") == first and pool.rejections["key_changed"] == 1
        join(attacker, "a", key=first)  # the registered key under the old certificate: no rotation, nothing changes
        assert pool.keys.certificate_of("a") == stamp_of(pem(root, "a"))
        issue_node(root / "tls", "a")  # a newer certificate: the key may change with it
        c = client(root, address, "a")
        session = join(c, "a", key=rotated)
        assert pool.keys.key_of("a") == rotated
        t, outcomes = dispatch(pool, ["a"])
        ins = c.pull(session, 5)
        update = Params.decode(delta())
        signature = sign_update(derived_key(0, "rotated"), ins.run_id, ins.round, update, 10, ins.config).signature
        c.push(IncomingResult(session, ins.instruction_id, ins.round, 10, payload=update.encode(), run_id=ins.run_id,
                              signature=signature))
        t.join(5)
        assert isinstance(outcomes[0], FitResult) and outcomes[0].signature.public_key == rotated


def test_a_rotation_refused_travels_as_access_denied():
    from potluck.transport.status import details_of, error_from_details

    back = error_from_details(details_of(StaleCertificate("older certificate")))
    assert type(back) is StaleCertificate and isinstance(back, AccessDenied)
    back = error_from_details(details_of(CertificateRevoked("revoked")))
    assert type(back) is CertificateRevoked and isinstance(back, AccessDenied)


def test_a_bundle_without_a_crl_path_checks_nothing(root):
    bundle = load_pem_bundle(root / "tls", "server")
    assert bundle.crl == root / "tls" / CRL_NAME
    assert load_pem_bundle(root / "tls", "node", "a").crl is None
    revoke_node(root / "tls", "a")
    pool = FleetPool(run_id="r", model_id="m", schema=MODEL.schema, data_info_json=b"{}", require_signatures=False)
    server, port = start_server(pool, "127.0.0.1:0", PemBundle(bundle.ca, bundle.cert, bundle.key))
    try:
        join(client(root, f"127.0.0.1:{port}", "a"), "a")  # no CRL given: the caller chose to check none
    finally:
        server.stop(0)


def test_the_registered_certificate_survives_a_restart_of_the_server(root, tmp_path):
    registry = tmp_path / "node-keys.json"
    older = stamp_of(pem(root, "a"))
    issue_node(root / "tls", "a")
    newer = stamp_of(pem(root, "a"))
    first, second = public_bytes(derived_key(0, "1")), public_bytes(derived_key(0, "2"))
    NodeKeys(registry).register("a", first, newer)
    NodeKeys(registry).register("a", first, older)  # the same key with an older certificate: the newer stays on record
    restarted = NodeKeys(registry)
    assert restarted.certificate_of("a") == newer
    with pytest.raises(StaleCertificate, match="a new key needs a certificate issued after the registered one"):
        restarted.register("a", second, older)
    with pytest.raises(AccessDenied, match="a new key needs a new certificate"):
        restarted.register("a", second, newer)
    issue_node(root / "tls", "a")
    restarted.register("a", second, stamp_of(pem(root, "a")))
    assert NodeKeys(registry).key_of("a") == second
