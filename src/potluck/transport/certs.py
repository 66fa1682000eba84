"""TLS material for mutual TLS: one project CA, one server certificate, one per node.

A TLS directory (``potluck certs`` writes it, default ``./tls``)::

    tls/ca.crt  ca.key           the project CA; ca.key stays with whoever issues certs
    tls/server.crt  server.key   serverAuth; SANs name every host/IP nodes dial
    tls/nodes/<id>.crt  .key     clientAuth; CN = node id = the node's identity
    tls/crl.pem                  revoked node certificates (``potluck certs revoke``, revocation.py)

Every key is ECDSA P-256 (gRPC's BoringSSL handles it; Ed25519 certificates it does
not reliably), stored as unencrypted PKCS#8 PEM with mode 0600; directories are made
0700. Files are written atomically (temp file, fsync, rename), and a key file is
created 0600 from the start, so it is never readable by others, even briefly.
Serial numbers start with the time of issue in nanoseconds (then 64 random bits), so
a later certificate has a larger serial (``revocation.CertificateStamp`` orders them).

Example::

    init_ca(Path("tls"))
    issue_server(Path("tls"), ["localhost", "127.0.0.1"])
    issue_node(Path("tls"), "hospital-a")
    ca, cert, key = tls_paths(Path("tls"), "node", "hospital-a")
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from potluck.core.errors import ConfigError
from potluck.transport.tls_files import CertificateError, make_private_dir, read_file, write_atomically

Role = Literal["server", "node"]

NODE_ID_RULE = "1-64 characters of A-Z a-z 0-9 . _ -, not starting with '.' or '-'"
_NODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_CLOCK_SKEW = timedelta(minutes=5)  # certificates start this much in the past
CRL_NAME = "crl.pem"  # in the TLS directory, beside ca.crt


@dataclass(frozen=True)
class CertInfo:
    """What a person needs to recognise a certificate.

    ``fingerprint`` is the SHA-256 of the DER encoding as colon-separated upper-case hex
    (as ``openssl x509 -fingerprint -sha256`` prints it); ``sans`` are ``DNS:name``,
    ``IP:addr`` or ``URI:uri`` strings; the datetimes are in UTC.
    """

    path: Path
    subject: str
    issuer: str
    fingerprint: str
    not_before: datetime
    not_after: datetime
    sans: tuple[str, ...]
    is_ca: bool
    serial: int = 0


def init_ca(tls_dir: Path, *, name: str = "potluck project CA", days: int = 3650, force: bool = False) -> CertInfo:
    """Create the project CA (``ca.crt``, ``ca.key``) in *tls_dir*.

    Refuses to replace an existing CA unless *force*: certificates issued by the old CA
    stop verifying against the new one.
    """
    _check_days(days)
    if not name.strip() or len(name) > 64:
        raise ConfigError(f"CA name must be 1-64 characters, got {name!r}")
    crt, key_path = tls_dir / "ca.crt", tls_dir / "ca.key"
    existing = [str(p) for p in (crt, key_path) if p.exists()]
    if existing and not force:
        raise CertificateError(
            f"a CA already exists ({', '.join(existing)}); pass --force to replace it "
            "(every certificate it issued will stop verifying)"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    make_private_dir(tls_dir)
    write_atomically(key_path, _key_pem(key), 0o600)
    write_atomically(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return _info(cert, crt)


def issue_server(tls_dir: Path, hosts: Sequence[str], *, days: int = 825) -> CertInfo:
    """Issue ``server.crt``/``server.key``, valid for every name or IP literal in *hosts*.

    Names become DNS SANs, IP literals (``127.0.0.1``, ``::1``) IP SANs; the CN is the
    first host. Nodes must dial one of these exactly. Replaces an existing server cert.
    """
    _check_days(days)
    unique = list(dict.fromkeys(h.strip() for h in hosts))
    if not unique:
        raise ConfigError("a server certificate needs at least one host (--host NAME or IP)")
    sans = [_host_san(h) for h in unique]
    cn = unique[0] if len(unique[0]) <= 64 else "potluck server"
    now = datetime.now(timezone.utc)
    return _issue(tls_dir, "server", cn, sans, not_before=now - _CLOCK_SKEW, not_after=now + timedelta(days=days))


def issue_node(tls_dir: Path, node_id: str, *, days: int = 825) -> CertInfo:
    """Issue ``nodes/<node_id>.crt``/``.key``: a client certificate whose CN is the node id.

    The server takes a node's identity from this CN (:func:`node_id_from_certificate`).
    A node id that is also a valid DNS name is added as a DNS SAN. Replaces an existing
    certificate for the same node.
    """
    _check_days(days)
    check_node_id(node_id)
    sans = [x509.DNSName(node_id)] if _is_dns_name(node_id) else []
    now = datetime.now(timezone.utc)
    return _issue(tls_dir, "node", node_id, sans, not_before=now - _CLOCK_SKEW, not_after=now + timedelta(days=days))


def check_node_id(node_id: str) -> str:
    """Return *node_id* if it is a valid node id, else raise ConfigError naming the rule."""
    if not _NODE_ID.fullmatch(node_id):
        raise ConfigError(f"invalid node id {node_id!r}: use {NODE_ID_RULE}")
    return node_id


def node_id_from_certificate(pem: bytes) -> str:
    """The node id a client certificate carries (its CN); CertificateError if it has none."""
    cert = _parse(pem, "node certificate")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(names[0].value) if names else ""
    if not _NODE_ID.fullmatch(cn):
        raise CertificateError(f"certificate {cert.subject.rfc4514_string()!r} does not carry a valid node id as CN")
    return cn


def certificate_sha256(pem: bytes) -> str:
    """Hex SHA-256 of a PEM certificate's DER encoding (its fingerprint, without colons)."""
    return _parse(pem, "certificate").fingerprint(hashes.SHA256()).hex()


def describe(cert_path: Path) -> CertInfo:
    """Read a PEM certificate file; CertificateError if missing or not a certificate."""
    return _info(_parse(read_file(cert_path), str(cert_path)), cert_path)


def find_certificates(tls_dir: Path) -> list[Path]:
    """Every ``*.crt`` in *tls_dir* and ``tls_dir/nodes``: CA first, then server, then nodes."""
    top = sorted(tls_dir.glob("*.crt"), key=lambda p: (p.name != "ca.crt", p.name))
    return top + sorted((tls_dir / "nodes").glob("*.crt"))


def verify_chain(cert_pem: bytes, ca_pem: bytes, *, now: datetime | None = None) -> None:
    """Check that *cert_pem* was signed by the CA in *ca_pem* and both are valid at *now*.

    Raises CertificateError saying which: the CA is not a CA, the certificate was signed
    by another CA, or a certificate is expired / not yet valid (with the date). Meant to
    give a clear reason before gRPC's handshake gives an opaque one; it does not replace
    the handshake's own checks (SANs, key usage).
    """
    when = now or datetime.now(timezone.utc)
    if when.tzinfo is None:
        raise ConfigError("verify_chain: `now` must be timezone-aware (e.g. datetime.now(timezone.utc))")
    ca, cert = _parse(ca_pem, "CA certificate"), _parse(cert_pem, "certificate")
    ca_name, name = ca.subject.rfc4514_string(), cert.subject.rfc4514_string()
    if not _is_ca(ca):
        raise CertificateError(f"{ca_name!r} is not a CA certificate (no BasicConstraints CA:TRUE)")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"certificate {name!r} is not signed by this CA ({ca_name!r}); it was issued by "
            f"{cert.issuer.rfc4514_string()!r} - issue it again with `potluck certs issue`"
        ) from None
    for what, c in (("CA certificate", ca), ("certificate", cert)):
        label = f"{what} {c.subject.rfc4514_string()!r}"
        if when < c.not_valid_before_utc:
            raise CertificateError(f"{label} is not yet valid: valid from {c.not_valid_before_utc:%Y-%m-%d %H:%M:%S UTC}")
        if when > c.not_valid_after_utc:
            raise CertificateError(f"{label} expired on {c.not_valid_after_utc:%Y-%m-%d %H:%M:%S UTC}")


def tls_paths(tls_dir: Path, role: Role, node_id: str | None = None) -> tuple[Path, Path, Path]:
    """``(ca.crt, cert, key)`` a server or node needs; CertificateError lists what is missing.

    Only ``ca.crt`` of the CA is needed at run time; ``ca.key`` never leaves the issuer.
    """
    crt, key = _cert_key_paths(tls_dir, role, node_id)
    ca = tls_dir / "ca.crt"
    fixes = {
        ca: f"potluck certs init --tls-dir {tls_dir}",
        crt: (f"potluck certs issue server --host HOST --tls-dir {tls_dir}" if role == "server"
              else f"potluck certs issue node {node_id} --tls-dir {tls_dir}"),
    }
    fixes[key] = fixes[crt]
    missing = [p for p in (ca, crt, key) if not p.is_file()]
    if missing:
        lines = "; ".join(f"{p} (make it with `{fixes[p]}`)" for p in missing)
        raise CertificateError(f"missing TLS files for the {role}: {lines}")
    return ca, crt, key


@dataclass(frozen=True)
class PemBundle:
    """The PEM bytes gRPC credentials take: root CA, own certificate chain, own private key;
    and, for a server, the CRL file it checks peers against (``revocation.Revocations``)."""

    ca: bytes
    cert: bytes
    key: bytes
    crl: Path | None = None


def load_pem_bundle(tls_dir: Path, role: Role, node_id: str | None = None, *, now: datetime | None = None) -> PemBundle:
    """Read the files of :func:`tls_paths` and check them before any handshake.

    Raises CertificateError if a file is missing, the certificate does not chain to
    ``ca.crt`` or is out of its validity window, or the key does not belong to it.
    """
    ca_path, crt_path, key_path = tls_paths(tls_dir, role, node_id)
    crl = tls_dir / CRL_NAME if role == "server" else None  # absent: nothing is revoked
    bundle = PemBundle(read_file(ca_path), read_file(crt_path), read_file(key_path), crl)
    verify_chain(bundle.cert, bundle.ca, now=now)
    try:
        key = serialization.load_pem_private_key(bundle.key, password=None)
    except (ValueError, TypeError):
        raise CertificateError(f"{key_path} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    own = _parse(bundle.cert, str(crt_path)).public_key().public_bytes(serialization.Encoding.DER, public)
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != own:
        raise CertificateError(f"{key_path} does not belong to {crt_path}; issue both again")
    return bundle


# --- internals -----------------------------------------------------------------------

def _issue(
    tls_dir: Path, role: Role, common_name: str, sans: Sequence[x509.GeneralName], *,
    not_before: datetime, not_after: datetime,
) -> CertInfo:
    """Sign a server/node certificate for an explicit validity window and write it.

    For a node, *common_name* is the node id. Tests use this to make expired or
    not-yet-valid certificates.
    """
    ca_cert, ca_key = load_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(time.time_ns() << 64 | secrets.randbits(64))  # ordered by issue, 64 random bits
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    crt_path, key_path = _cert_key_paths(tls_dir, role, common_name)
    make_private_dir(crt_path.parent)
    write_atomically(key_path, _key_pem(key), 0o600)
    write_atomically(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return _info(cert, crt_path)


def load_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and its private key (what signs certificates and the CRL)."""
    crt, key_path = tls_dir / "ca.crt", tls_dir / "ca.key"
    missing = [str(p) for p in (crt, key_path) if not p.is_file()]
    if missing:
        raise CertificateError(
            f"no CA in {tls_dir} ({', '.join(missing)} missing): run `potluck certs init --tls-dir {tls_dir}` first"
        )
    try:
        key = serialization.load_pem_private_key(read_file(key_path), password=None)
    except (ValueError, TypeError):
        key = None  # not a PEM key, or one with a password: said below
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an ECDSA key; recreate the CA with `potluck certs init --force`")
    return _parse(read_file(crt), str(crt)), key


def _cert_key_paths(tls_dir: Path, role: Role, node_id: str | None) -> tuple[Path, Path]:
    if role == "server":
        return tls_dir / "server.crt", tls_dir / "server.key"
    if role != "node" or node_id is None:
        raise ConfigError(f"TLS role must be 'server' or 'node' with a node id, got {role!r} / {node_id!r}")
    check_node_id(node_id)
    return tls_dir / "nodes" / f"{node_id}.crt", tls_dir / "nodes" / f"{node_id}.key"


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _is_dns_name(host.removeprefix("*.")):
        raise ConfigError(f"invalid host {host!r}: give a DNS name (letters, digits, '-', '.') or an IP address")
    return x509.DNSName(host.lower())


def _is_dns_name(name: str) -> bool:
    return 0 < len(name) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    off = dict.fromkeys(("content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
                         "encipher_only", "decipher_only"), False)
    return x509.KeyUsage(digital_signature=not cert_sign, key_cert_sign=cert_sign, crl_sign=cert_sign, **off)


def _check_days(days: int) -> None:
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")


def _parse(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise CertificateError(f"{what} is not a PEM certificate") from None


def _info(cert: x509.Certificate, path: Path) -> CertInfo:
    try:
        sans = tuple(_san_text(n) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        sans = ()
    return CertInfo(
        path=path, subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string(),
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc, sans=sans, is_ca=_is_ca(cert),
        serial=cert.serial_number,
    )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _san_text(name: x509.GeneralName) -> str:
    prefix = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.UniformResourceIdentifier: "URI"}.get(type(name), "other")
    return f"{prefix}:{name.value}"


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
