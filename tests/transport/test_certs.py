"""TLS material: files and modes, SANs, chain checks, and real mutual-TLS handshakes.

Two independent oracles: ``openssl verify`` and a handshake with Python's ``ssl``
module (OpenSSL underneath), which is what gRPC's TLS will demand of the same files.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from potluck.core.errors import ConfigError
from potluck.transport import certs, revocation, tls_files
from potluck.transport.certs import CertificateError

NOW = datetime.now(timezone.utc)
TIMEOUT = 5.0


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def tls(tmp_path: Path) -> Path:
    """A complete TLS directory: CA, server (localhost, 127.0.0.1, ::1), node ``node-1``."""
    tls_dir = tmp_path / "tls"
    certs.init_ca(tls_dir)
    certs.issue_server(tls_dir, ["localhost", "127.0.0.1", "::1"])
    certs.issue_node(tls_dir, "node-1")
    return tls_dir


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """A second, unrelated CA with a node of the same name."""
    tls_dir = tmp_path / "other"
    certs.init_ca(tls_dir, name="someone else's CA")
    certs.issue_node(tls_dir, "node-1")
    return tls_dir


def node_window(tls: Path, node_id: str, start: timedelta, end: timedelta) -> bytes:
    """A node certificate valid from NOW+start to NOW+end (PEM)."""
    info = certs._issue(tls, "node", node_id, [], not_before=NOW + start, not_after=NOW + end)
    return info.path.read_bytes()


# --- files --------------------------------------------------------------------------

def test_files_exist_with_private_modes(tls: Path) -> None:
    for name in ["ca.crt", "ca.key", "server.crt", "server.key", "nodes/node-1.crt", "nodes/node-1.key"]:
        assert (tls / name).is_file(), name
    for key in ["ca.key", "server.key", "nodes/node-1.key"]:
        assert mode(tls / key) == 0o600, key
    assert mode(tls) == 0o700 and mode(tls / "nodes") == 0o700
    assert b"BEGIN PRIVATE KEY" in (tls / "ca.key").read_bytes()  # PKCS#8, unencrypted
    assert not [p for p in tls.rglob(".*.tmp")]


def test_keys_are_created_private_never_widened(tls: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[tuple[str, int]] = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append((str(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(tls_files.os, "open", spy)
    (tls / "nodes" / "node-1.key").chmod(0o644)
    certs.issue_node(tls, "node-1")
    key_opens = [m for p, m in opened if p.endswith(f".key.{os.getpid()}.tmp")]
    assert key_opens == [0o600]
    assert mode(tls / "nodes" / "node-1.key") == 0o600


def test_ca_refuses_overwrite_without_force(tls: Path) -> None:
    before = (tls / "ca.crt").read_bytes()
    with pytest.raises(CertificateError, match="a CA already exists .*--force"):
        certs.init_ca(tls)
    assert (tls / "ca.crt").read_bytes() == before
    info = certs.init_ca(tls, force=True)
    assert (tls / "ca.crt").read_bytes() != before and info.is_ca


def test_ca_extensions(tls: Path) -> None:
    ca = x509.load_pem_x509_certificate((tls / "ca.crt").read_bytes())
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)


def test_issuing_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="run `potluck certs init"):
        certs.issue_server(tmp_path, ["localhost"])
    with pytest.raises(CertificateError, match="run `potluck certs init"):
        certs.issue_node(tmp_path, "a")


def test_server_sans_distinguish_ips_from_names(tls: Path) -> None:
    cert = x509.load_pem_x509_certificate((tls / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert "127.0.0.1" not in san.get_values_for_type(x509.DNSName)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    info = certs.describe(tls / "server.crt")
    assert info.subject == "CN=localhost" and info.sans == ("DNS:localhost", "IP:127.0.0.1", "IP:::1")


@pytest.mark.parametrize("hosts", [[], ["bad host"], ["-x.example"], ["a..b"]])
def test_bad_hosts_are_rejected(tls: Path, hosts: list[str]) -> None:
    with pytest.raises(ConfigError):
        certs.issue_server(tls, hosts)


def test_describe_matches_openssl_fields(tls: Path) -> None:
    info = certs.describe(tls / "nodes" / "node-1.crt")
    assert info.subject == "CN=node-1" and info.issuer == "CN=potluck project CA" and not info.is_ca
    assert len(info.fingerprint.split(":")) == 32 and info.fingerprint == info.fingerprint.upper()
    assert info.not_before.tzinfo is not None and info.not_after - info.not_before > timedelta(days=824)
    assert info.sans == ("DNS:node-1",)
    with pytest.raises(CertificateError, match="cannot read"):
        certs.describe(tls / "missing.crt")


# --- node ids -------------------------------------------------------------------------

@pytest.mark.parametrize("node_id", ["node-1", "a", "hospital_A.eu", "0", "x" * 64])
def test_node_id_round_trip(tls: Path, node_id: str) -> None:
    info = certs.issue_node(tls, node_id)
    assert certs.node_id_from_certificate(info.path.read_bytes()) == node_id


@pytest.mark.parametrize("node_id", ["", ".hidden", "-flag", "../etc", "a/b", "a b", "x" * 65, "é"])
def test_invalid_node_ids_are_rejected(tls: Path, node_id: str) -> None:
    with pytest.raises(ConfigError, match="invalid node id .*not starting with"):
        certs.issue_node(tls, node_id)


def test_node_id_needs_a_valid_cn(tls: Path) -> None:
    with pytest.raises(CertificateError, match="valid node id"):
        certs.node_id_from_certificate((tls / "ca.crt").read_bytes())
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        certs.node_id_from_certificate(b"garbage")


# --- chain checks ---------------------------------------------------------------------

def test_issued_certificates_verify(tls: Path) -> None:
    ca = (tls / "ca.crt").read_bytes()
    certs.verify_chain((tls / "server.crt").read_bytes(), ca)
    certs.verify_chain((tls / "nodes" / "node-1.crt").read_bytes(), ca)


def test_certificate_from_another_ca_fails(tls: Path, other_ca: Path) -> None:
    with pytest.raises(CertificateError, match="'CN=node-1' is not signed by this CA .*someone else's CA"):
        certs.verify_chain((other_ca / "nodes" / "node-1.crt").read_bytes(), (tls / "ca.crt").read_bytes())


def test_expired_certificate_fails_with_its_date(tls: Path) -> None:
    pem = node_window(tls, "old", -timedelta(days=10), -timedelta(days=1))
    expected = (NOW - timedelta(days=1)).strftime("%Y-%m-%d")
    with pytest.raises(CertificateError, match=f"'CN=old' expired on {expected}"):
        certs.verify_chain(pem, (tls / "ca.crt").read_bytes())


def test_not_yet_valid_certificate_fails_with_its_date(tls: Path) -> None:
    pem = node_window(tls, "future", timedelta(days=2), timedelta(days=30))
    expected = (NOW + timedelta(days=2)).strftime("%Y-%m-%d")
    with pytest.raises(CertificateError, match=f"'CN=future' is not yet valid: valid from {expected}"):
        certs.verify_chain(pem, (tls / "ca.crt").read_bytes())
    certs.verify_chain(pem, (tls / "ca.crt").read_bytes(), now=NOW + timedelta(days=3))


def test_a_leaf_is_not_a_ca(tls: Path) -> None:
    leaf = (tls / "nodes" / "node-1.crt").read_bytes()
    with pytest.raises(CertificateError, match="'CN=node-1' is not a CA certificate"):
        certs.verify_chain((tls / "server.crt").read_bytes(), leaf)


def test_expired_ca_fails(tls: Path) -> None:
    with pytest.raises(CertificateError, match="CA certificate 'CN=potluck project CA' expired on"):
        certs.verify_chain((tls / "server.crt").read_bytes(), (tls / "ca.crt").read_bytes(),
                           now=NOW + timedelta(days=3651))


def test_tls_paths_names_missing_files_and_the_fix(tls: Path) -> None:
    ca, crt, key = certs.tls_paths(tls, "node", "node-1")
    assert (ca.name, crt, key) == ("ca.crt", tls / "nodes" / "node-1.crt", tls / "nodes" / "node-1.key")
    with pytest.raises(CertificateError, match=r"nodes/node-2.crt \(make it with `potluck certs issue node node-2"):
        certs.tls_paths(tls, "node", "node-2")
    (tls / "server.key").unlink()
    with pytest.raises(CertificateError, match=r"server.key \(make it with `potluck certs issue server --host"):
        certs.tls_paths(tls, "server")


def test_load_pem_bundle_checks_before_the_handshake(tls: Path, other_ca: Path) -> None:
    bundle = certs.load_pem_bundle(tls, "node", "node-1")
    assert bundle.ca == (tls / "ca.crt").read_bytes() and b"PRIVATE KEY" in bundle.key
    shutil.copy(other_ca / "nodes" / "node-1.key", tls / "nodes" / "node-1.key")
    with pytest.raises(CertificateError, match="node-1.key does not belong to"):
        certs.load_pem_bundle(tls, "node", "node-1")
    shutil.copy(other_ca / "nodes" / "node-1.crt", tls / "nodes" / "node-1.crt")
    with pytest.raises(CertificateError, match="not signed by this CA"):
        certs.load_pem_bundle(tls, "node", "node-1")


def test_a_missing_certificate_file_is_named_with_its_fix(tls: Path) -> None:
    (tls / "nodes" / "node-1.crt").unlink()
    with pytest.raises(CertificateError, match=r"missing TLS files for the node: .*node-1.crt \(make it with"):
        certs.load_pem_bundle(tls, "node", "node-1")


def test_file_system_failures_are_certificate_errors_naming_the_file(tls: Path) -> None:
    (tls / "odd.crt").mkdir()  # a directory where a certificate should be
    with pytest.raises(CertificateError, match=r"cannot read .*odd.crt: Is a directory"):
        certs.describe(tls / "odd.crt")
    blocker = tls.parent / "blocker"
    blocker.write_text("a file, not a directory")
    with pytest.raises(CertificateError, match=r"cannot create the TLS directory .*blocker/tls: Not a directory"):
        certs.init_ca(blocker / "tls")
    (tls / "ca.key").write_text("not a key")
    with pytest.raises(CertificateError, match=r"ca.key is not an ECDSA key"):
        certs.issue_node(tls, "node-2")


def test_tls_material_ssl_cannot_use_is_a_certificate_error(tls: Path) -> None:
    from potluck.transport.bulk import wire

    bundle = certs.load_pem_bundle(tls, "server")
    with pytest.raises(CertificateError, match="the bulk lane cannot use this TLS material"):
        wire.server_context(certs.PemBundle(b"-----BEGIN CERTIFICATE-----\nnot base64\n", bundle.cert, bundle.key))
    with pytest.raises(CertificateError, match="the bulk lane cannot use this TLS material"):
        wire.client_context(certs.PemBundle(bundle.ca, bundle.cert, b"not a key"))


# --- independent oracles --------------------------------------------------------------

OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not on PATH")
def test_openssl_agrees(tls: Path, other_ca: Path) -> None:
    def verify(cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OPENSSL, "verify", "-purpose", purpose, "-CAfile", str(tls / "ca.crt"), str(cert)],
                              capture_output=True, text=True, timeout=TIMEOUT)

    ok = verify(tls / "server.crt", "sslserver")
    assert ok.returncode == 0 and ok.stdout.strip().endswith(": OK"), ok.stderr
    assert verify(tls / "nodes" / "node-1.crt", "sslclient").returncode == 0
    assert verify(tls / "nodes" / "node-1.crt", "sslserver").returncode != 0  # clientAuth only
    assert verify(other_ca / "nodes" / "node-1.crt", "sslclient").returncode != 0
    node_window(tls, "old", -timedelta(days=10), -timedelta(days=1))
    expired = verify(tls / "nodes" / "old.crt", "sslclient")
    assert expired.returncode != 0 and "certificate has expired" in expired.stdout + expired.stderr
    fingerprint = subprocess.run([OPENSSL, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tls / "ca.crt")],
                                 capture_output=True, text=True, timeout=TIMEOUT).stdout
    assert fingerprint.strip().endswith(certs.describe(tls / "ca.crt").fingerprint)


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not on PATH")
def test_openssl_agrees_on_the_revocation_list(tls: Path) -> None:
    revocation.revoke_node(tls, "node-1")
    certs.issue_node(tls, "node-2")

    def verify(node: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([OPENSSL, "verify", "-crl_check", "-CAfile", str(tls / "ca.crt"), "-CRLfile",
                               str(tls / certs.CRL_NAME), str(tls / "nodes" / f"{node}.crt")],
                              capture_output=True, text=True, timeout=TIMEOUT)

    revoked = verify("node-1")
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr
    assert verify("node-2").returncode == 0


def test_serials_grow_in_the_order_of_issue(tls: Path) -> None:
    stamps = []
    for _ in range(3):
        info = certs.issue_node(tls, "node-1")
        stamps.append(revocation.stamp_of(info.path.read_bytes()))
    serials = [s.serial for s in stamps]
    assert serials == sorted(serials) and len(set(serials)) == 3 and all(0 < s < 2**159 for s in serials)  # 20 octets
    assert stamps == sorted(stamps)  # a certificate issued later is newer, even within one second
    backdated = revocation.stamp_of(node_window(tls, "node-1", -timedelta(days=2), timedelta(days=1)))
    assert backdated < stamps[0]  # an earlier validity start orders first, whatever its serial


def handshake(tls: Path, client_dir: Path, node_id: str, server_hostname: str = "127.0.0.1") -> tuple[object, object]:
    """One mutual-TLS connection on 127.0.0.1: (what the server saw, what the client got)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls / "server.crt", tls / "server.key")
    server_ctx.load_verify_locations(tls / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the server and its hostname
    client_ctx.load_verify_locations(tls / "ca.crt")
    client_ctx.load_cert_chain(client_dir / "nodes" / f"{node_id}.crt", client_dir / "nodes" / f"{node_id}.key")

    seen: list[object] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = listener.getsockname()[1]

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                der = tls_conn.getpeercert(binary_form=True)
                seen.append(certs.node_id_from_certificate(ssl.DER_cert_to_PEM_cert(der).encode()))
                tls_conn.sendall(b"hello " + str(seen[0]).encode())
        except (OSError, ssl.SSLError) as exc:
            seen.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                client_ctx.wrap_socket(raw, server_hostname=server_hostname) as conn:
            got: object = conn.recv(64)  # with TLS 1.3 a refused client cert surfaces here
    except (OSError, ssl.SSLError) as exc:
        got = exc
    finally:
        thread.join(TIMEOUT)
        listener.close()
    assert not thread.is_alive() and len(seen) == 1
    return seen[0], got


def test_mutual_tls_handshake_carries_the_node_id(tls: Path) -> None:
    seen, got = handshake(tls, tls, "node-1")
    assert seen == "node-1" and got == b"hello node-1"
    assert handshake(tls, tls, "node-1", server_hostname="localhost") == ("node-1", b"hello node-1")


def test_handshake_refuses_a_client_from_another_ca(tls: Path, other_ca: Path) -> None:
    seen, got = handshake(tls, other_ca, "node-1")
    assert isinstance(seen, ssl.SSLError) and "certificate verify failed" in str(seen)
    assert not isinstance(got, bytes) or got == b""


def test_handshake_refuses_an_expired_client(tls: Path) -> None:
    node_window(tls, "old", -timedelta(days=10), -timedelta(days=1))
    seen, got = handshake(tls, tls, "old")
    assert isinstance(seen, ssl.SSLError) and "certificate verify failed" in str(seen)
    assert not isinstance(got, bytes) or got == b""


def test_client_refuses_a_server_name_not_in_the_certificate(tls: Path) -> None:
    seen, got = handshake(tls, tls, "node-1", server_hostname="fl.example.org")
    assert isinstance(got, ssl.SSLCertVerificationError) and "fl.example.org" in str(got)
    assert isinstance(seen, (OSError, ssl.SSLError))
