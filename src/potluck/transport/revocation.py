"""Revoked certificates: the CRL ``potluck certs revoke`` writes, and the server's check.

::

    tls/crl.pem   a CRL (PEM) signed by ca.key: the serials of revoked node certificates

gRPC's Python server takes PEM bytes and no CRL, so the check is potluck's own: the
server reads the serial of the peer's certificate at every gRPC call and every
bulk-lane request, and refuses a listed one with :class:`CertificateRevoked`
(PERMISSION_DENIED: the node stops). :class:`Revocations` holds the list in force. It
is read at start (CertificateError if it does not verify against ``ca.crt``), again
whenever the file changes (its inode, size or mtime: a rewrite is atomic, so a new
inode), and on :meth:`Revocations.reload` (SIGHUP in ``potluck server``). A file that
does not verify on a later read is logged and ignored: the list in force stays. No
file: nothing is revoked.

:class:`CertificateStamp` orders certificates by issue, so that a node's signing key
can only be replaced together with a newer certificate (``ledger.signing.NodeKeys``).

Example::

    revoke_node(Path("tls"), "hospital-b")             # writes tls/crl.pem
    revocations = Revocations(Path("tls/crl.pem"), ca_pem)
    revocations.check_pem(peer_pem)                    # CertificateRevoked if listed
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from potluck.core.errors import AccessDenied
from potluck.transport.certs import CRL_NAME, check_node_id, load_ca
from potluck.transport.tls_files import CertificateError, read_file, write_atomically

log = logging.getLogger(__name__)


class CertificateRevoked(AccessDenied):
    """The peer's certificate is on the project CA's revocation list (``potluck certs
    revoke``): every call it makes is refused, on gRPC and on the bulk lane."""


@dataclass(frozen=True, order=True)
class CertificateStamp:
    """Which certificate a node presented, and where it stands in the order of issue.

    Stamps compare by validity start, then serial: a certificate issued later is
    greater (potluck's serials begin with the issue time, ``certs.py``). ``sha256`` is
    the fingerprint of the DER encoding in hex.
    """

    not_before: datetime
    serial: int
    sha256: str

    def describe(self) -> str:
        return f"serial {self.serial:x}, valid from {self.not_before:%Y-%m-%d %H:%M:%S} UTC"


def stamp_of(pem: bytes) -> CertificateStamp:
    """The stamp of a PEM certificate; CertificateError if it is not one."""
    cert = _certificate(pem, "certificate")
    return CertificateStamp(cert.not_valid_before_utc, cert.serial_number, cert.fingerprint(hashes.SHA256()).hex())


@dataclass(frozen=True)
class Revocation:
    """What :func:`revoke_node` did: ``listed`` certificates are on the CRL now;
    ``already`` if this one was before (the CRL was left as it was)."""

    node_id: str
    serial: int
    crl_path: Path
    listed: int
    already: bool


def revoke_node(tls_dir: Path, node_id: str, *, cert_path: Path | None = None,
                now: datetime | None = None) -> Revocation:
    """Put the certificate of ``node_id`` on ``tls_dir/crl.pem``, signed by the CA.

    The certificate is ``tls_dir/nodes/<node_id>.crt`` unless ``cert_path`` names
    another (a copy of an older one). It must carry the node id as CN and be signed by
    this CA. CertificateError, naming the nodes that do have certificates, when there is
    none to revoke; ConfigError for an invalid node id. Revoking twice changes nothing.
    """
    check_node_id(node_id)
    ca, ca_key = load_ca(tls_dir)
    cert = _node_certificate(tls_dir, node_id, cert_path, ca)
    crl_path = tls_dir / CRL_NAME
    old = read_crl(crl_path, ca) if crl_path.exists() else None
    entries = list(old) if old is not None else []
    if any(r.serial_number == cert.serial_number for r in entries):
        return Revocation(node_id, cert.serial_number, crl_path, len(entries), already=True)
    when = now or datetime.now(timezone.utc)
    entries.append(x509.RevokedCertificateBuilder().serial_number(cert.serial_number).revocation_date(when).build())
    number = _crl_number(old) + 1
    builder = (
        x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
        .last_update(when).next_update(max(ca.not_valid_after_utc, when + timedelta(days=1)))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    for entry in entries:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    write_atomically(crl_path, crl.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("revoked the certificate of node %s (serial %x); %s lists %d", node_id, cert.serial_number,
             crl_path, len(entries))
    return Revocation(node_id, cert.serial_number, crl_path, len(entries), already=False)


def read_crl(path: Path, ca: x509.Certificate) -> x509.CertificateRevocationList:
    """The CRL in ``path``, checked: CertificateError unless it is a PEM CRL that ``ca`` signed."""
    try:
        crl = x509.load_pem_x509_crl(read_file(path))
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate revocation list; "
                               "write it again with `potluck certs revoke`") from None
    key = ca.public_key()
    try:
        valid = crl.issuer == ca.subject and crl.is_signature_valid(key)  # type: ignore[arg-type]
    except (TypeError, InvalidSignature):
        valid = False
    if not valid:
        raise CertificateError(f"{path} is not signed by the project CA ({ca.subject.rfc4514_string()!r}); "
                               "write it again with `potluck certs revoke`")
    return crl


def revoked_serials(tls_dir: Path) -> frozenset[int]:
    """The serials ``tls_dir/crl.pem`` lists (none without the file); CertificateError if it does not verify."""
    path = tls_dir / CRL_NAME
    if not path.exists():
        return frozenset()
    ca = _certificate(read_file(tls_dir / "ca.crt"), str(tls_dir / "ca.crt"))
    return frozenset(r.serial_number for r in read_crl(path, ca))


class Revocations:
    """The revocation list a server checks peers against, re-read when its file changes.

    ``path`` need not exist (nothing is revoked until it does); ``ca_pem`` is the CA
    that must have signed it. The constructor raises CertificateError for a file that
    does not verify; later reads log it and keep the list in force. Thread-safe.
    """

    def __init__(self, path: Path, ca_pem: bytes) -> None:
        self.path = path
        self._ca = _certificate(ca_pem, "CA certificate")
        self._lock = threading.Lock()
        self._state = _file_state(path)
        self._revoked: Mapping[int, datetime] = self._read()

    def reload(self) -> None:
        """Read the file again now, changed or not (``potluck server`` does on SIGHUP)."""
        with self._lock:
            self._state = _file_state(self.path)
            self._load()
        log.info("revocation list %s reloaded: %d certificates revoked", self.path, len(self._revoked))

    def revoked(self) -> Mapping[int, datetime]:
        """Serial → revocation time of every revoked certificate, re-read if the file changed."""
        state = _file_state(self.path)
        if state != self._state:
            with self._lock:
                if state != self._state:
                    self._state = state
                    self._load()
        return self._revoked

    def check_pem(self, pem: bytes | None, count: Callable[[str], None] | None = None) -> None:
        """CertificateRevoked if the PEM certificate a peer presented is revoked, after
        ``count("revoked")``; nothing for ``None`` (no certificate: plaintext)."""
        if pem is not None:
            self._check(*_serial_and_name(pem, der=False), count)

    def check_der(self, der: bytes, count: Callable[[str], None] | None = None) -> None:
        """As :meth:`check_pem`, for a DER certificate (``ssl``'s ``getpeercert(True)``)."""
        self._check(*_serial_and_name(der, der=True), count)

    def _check(self, serial: int, name: str, count: Callable[[str], None] | None) -> None:
        when = self.revoked().get(serial)
        if when is not None:
            if count is not None:
                count("revoked")
            raise CertificateRevoked(
                f"the certificate of {name!r} (serial {serial:x}) was revoked by the project CA on "
                f"{when:%Y-%m-%d %H:%M:%S} UTC; it may not call this server (`potluck certs issue node {name}` "
                "issues a new one)")

    def _read(self) -> Mapping[int, datetime]:
        if not self.path.exists():
            return {}
        return {r.serial_number: r.revocation_date_utc for r in read_crl(self.path, self._ca)}

    def _load(self) -> None:
        try:
            revoked = self._read()
        except CertificateError as exc:
            log.error("%s; the revocation list in force stays (%d certificates)", exc, len(self._revoked))
            return
        if revoked.keys() != self._revoked.keys():
            log.warning("revocation list %s: %d certificates revoked (was %d)", self.path, len(revoked),
                        len(self._revoked))
        self._revoked = revoked


def reload_on_sighup(revocations: Revocations | None) -> Callable[[], None]:
    """Make SIGHUP reload ``revocations``; returns what puts the old handler back.

    Only the main thread may set signal handlers: elsewhere (or without SIGHUP, or
    without a list) this does nothing, and the file is still re-read when it changes.
    """
    if revocations is None or not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: revocations.reload())
    return lambda: signal.signal(signal.SIGHUP, previous)


# --- internals -----------------------------------------------------------------------

def _node_certificate(tls_dir: Path, node_id: str, cert_path: Path | None, ca: x509.Certificate) -> x509.Certificate:
    path = cert_path or tls_dir / "nodes" / f"{node_id}.crt"
    if not path.is_file():
        issued = sorted(p.stem for p in (tls_dir / "nodes").glob("*.crt"))
        raise CertificateError(
            f"no certificate for node {node_id!r} to revoke ({path} does not exist); the CA in {tls_dir} "
            f"issued certificates for: {', '.join(issued) or 'no node yet'}")
    cert = _certificate(read_file(path), str(path))
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names or names[0].value != node_id:
        raise CertificateError(f"{path} is the certificate of {cert.subject.rfc4514_string()!r}, not of node {node_id!r}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(f"{path} was not issued by the CA in {tls_dir}: there is nothing of it to revoke") from None
    return cert


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return 0


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _certificate(data: bytes, what: str, *, der: bool = False) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(data) if der else x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{what} is not a {'DER' if der else 'PEM'} certificate") from None


@functools.lru_cache(maxsize=1024)
def _serial_and_name(data: bytes, *, der: bool) -> tuple[int, str]:
    """A peer certificate's serial and CN, parsed once per distinct certificate."""
    cert = _certificate(data, "the peer's certificate", der=der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.serial_number, str(names[0].value) if names else cert.subject.rfc4514_string()
