"""A peer's identity: its project-CA certificate (mutual TLS) and its Ed25519 key.

A peer both dials and accepts connections, so its certificate carries both
``serverAuth`` and ``clientAuth`` (a node certificate of ``potluck certs`` has only
``clientAuth``, and OpenSSL refuses it on the accepting side). Peer certificates live
beside the node certificates of the same TLS directory::

    tls/ca.crt                      the project CA (the same one as for server mode)
    tls/peers/<peer-id>.crt  .key   ECDSA P-256, CN = peer id, both key usages

The Ed25519 key (``keys/<peer-id>.ed25519.pem`` in the peer's run directory) signs its
DHT records; a membership record is also signed with the certificate's key, which binds
the Ed25519 key to a certificate the CA issued (see ``records.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from potluck.core.files import atomic_write
from potluck.ledger.signing import SigningKey, load_or_create_key, public_bytes
from potluck.transport.certs import CertificateError, PemBundle, check_node_id, verify_chain

_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class PeerIdentity:
    """Everything a peer proves itself with; ``fingerprint`` is the certificate's hex SHA-256."""

    peer_id: str
    tls: PemBundle
    tls_key: ec.EllipticCurvePrivateKey
    signing_key: SigningKey
    fingerprint: str

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.signing_key)


def peer_cert_paths(tls_dir: Path, peer_id: str) -> tuple[Path, Path]:
    check_node_id(peer_id)
    return tls_dir / "peers" / f"{peer_id}.crt", tls_dir / "peers" / f"{peer_id}.key"


def issue_peer(tls_dir: Path, peer_id: str, *, days: int = 825) -> Path:
    """Issue ``peers/<peer_id>.crt``/``.key`` signed by the CA in *tls_dir* (needs ``ca.key``).

    Raises CertificateError when the CA is missing (``potluck certs init`` makes one).
    """
    crt_path, key_path = peer_cert_paths(tls_dir, peer_id)
    ca_cert, ca_key = _load_ca(tls_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(timezone.utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _SKEW).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    crt_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    atomic_write(key_path, pem_key)
    key_path.chmod(0o600)
    atomic_write(crt_path, cert.public_bytes(serialization.Encoding.PEM))
    return crt_path


def load_identity(tls_dir: Path, peer_id: str, key_file: Path) -> PeerIdentity:
    """Read and check a peer's certificate and key, and load (or make) its Ed25519 key.

    Raises CertificateError naming the missing file and the command that makes it, or
    why the certificate does not verify against ``ca.crt``.
    """
    crt_path, key_path = peer_cert_paths(tls_dir, peer_id)
    ca_path = tls_dir / "ca.crt"
    missing = [str(p) for p in (ca_path, crt_path, key_path) if not p.is_file()]
    if missing:
        raise CertificateError(f"missing TLS files for peer {peer_id!r}: {', '.join(missing)} "
                               f"(make them with `potluck peer cert {peer_id} --tls-dir {tls_dir}`)")
    bundle = PemBundle(ca_path.read_bytes(), crt_path.read_bytes(), key_path.read_bytes())
    verify_chain(bundle.cert, bundle.ca)
    cert = x509.load_pem_x509_certificate(bundle.cert)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != peer_id:
        raise CertificateError(f"{crt_path} is not a certificate for peer {peer_id!r}")
    tls_key = serialization.load_pem_private_key(bundle.key, password=None)
    if not isinstance(tls_key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an ECDSA key")
    return PeerIdentity(peer_id, bundle, tls_key, load_or_create_key(key_file),
                        cert.fingerprint(hashes.SHA256()).hex())


def _load_ca(tls_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path = tls_dir / "ca.crt", tls_dir / "ca.key"
    if not crt.is_file() or not key_path.is_file():
        raise CertificateError(f"no CA in {tls_dir}: run `potluck certs init --tls-dir {tls_dir}` first")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path} is not an ECDSA key")
    return x509.load_pem_x509_certificate(crt.read_bytes()), key
