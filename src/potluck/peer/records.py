"""Signed, timestamped, short-lived DHT records: who is a peer, and who is ready to average.

A record is compact JSON, at most :data:`MAX_RECORD_BYTES`::

    {"body": {"v": 1, "kind": "member" | "ready" | "leave", "run": RUN, "peer": ID,
              "addr": [HOST, LANE_PORT], "step": S, "weight": W, "anchor": MODEL_SHA256_HEX,
              "state": "STEP:MODEL_SHA256:OUTER_SHA256" (the last commit; "" before one),
              "issued": UNIX_SECONDS, "expires": UNIX_SECONDS,
              "key": ED25519_PUBLIC_HEX, "cert": CERT_DER_BASE64 (member only)},
     "sig": ED25519_SIGNATURE_HEX, "tls_sig": ECDSA_SIGNATURE_BASE64 (member only)}

Both signatures cover ``potluck.peer.record.v1`` + newline + the body as sorted,
separator-free JSON. ``sig`` is by the Ed25519 key named in the body; a member record's
``tls_sig`` is by the key of the certificate it carries, which binds the Ed25519 key to
a certificate of the project CA (a certificate alone is public: anyone could copy it).

:class:`Trust` admits records: a member record when its certificate chains to the CA,
names the peer (CN) and signed the body; any other record only when its Ed25519 key is
the one a member record of that peer introduced. A ``leave`` record, put under the
members key when a peer stops, replaces its member record there (the newest record of a
peer wins), so the others stop counting on it at once instead of after its ttl.
Everything else is ignored, with a
:class:`RecordError` saying why (``reason`` is one of :data:`REASONS`).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from potluck.core.errors import PotluckError
from potluck.ledger.signing import verify
from potluck.peer.identity import PeerIdentity
from potluck.transport.certs import CertificateError, verify_chain

DOMAIN = b"potluck.peer.record.v1\n"
MAX_RECORD_BYTES = 2048
MAX_TTL = 60.0  # seconds: a record may not claim to live longer
CLOCK_SKEW = 5.0  # seconds a record's issue time may lie in the future
KINDS = ("member", "ready", "leave")
REASONS = ("malformed", "signature", "expired", "run", "certificate", "unknown-key")


class RecordError(PotluckError):
    """A DHT record was ignored; ``reason`` says why (one of :data:`REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PeerRecord:
    """One verified-as-well-formed record (its signature by ``public_key`` checked)."""

    kind: str
    run: str
    peer_id: str
    host: str
    port: int
    step: int
    weight: float
    anchor: str
    issued: float
    expires: float
    public_key: bytes
    cert_der: bytes
    raw: bytes
    state: str = ""  # "STEP:MODEL_SHA256:OUTER_SHA256" of the peer's last commit (joining.py)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port


def make_record(identity: PeerIdentity, kind: str, run: str, address: tuple[str, int], *, step: int,
                now: float, ttl: float, weight: float = 0.0, anchor: str = "", state: str = "") -> bytes:
    """Sign a fresh record; ``ttl`` seconds in (0, MAX_TTL]."""
    if kind not in KINDS:
        raise RecordError("malformed", f"unknown record kind {kind!r}")
    if not 0 < ttl <= MAX_TTL:
        raise RecordError("malformed", f"record ttl must be in (0, {MAX_TTL}] seconds, got {ttl}")
    body: dict[str, Any] = {"v": 1, "kind": kind, "run": run, "peer": identity.peer_id,
                            "addr": [address[0], int(address[1])], "step": int(step), "weight": float(weight),
                            "anchor": anchor[:64], "state": state[:160],
                            "issued": round(now, 3), "expires": round(now + ttl, 3), "key": identity.public_key.hex()}
    if kind == "member":
        der = x509.load_pem_x509_certificate(identity.tls.cert).public_bytes(serialization.Encoding.DER)
        body["cert"] = base64.b64encode(der).decode()
    message = _message(body)
    envelope: dict[str, Any] = {"body": body, "sig": identity.signing_key.sign(message).hex()}
    if kind == "member":
        tls_sig = identity.tls_key.sign(message, ec.ECDSA(hashes.SHA256()))
        envelope["tls_sig"] = base64.b64encode(tls_sig).decode()
    raw = json.dumps(envelope, sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError("malformed", f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}")
    return raw


def parse_record(raw: bytes) -> PeerRecord:
    """Decode a record and check its Ed25519 signature; RecordError when either fails."""
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError("malformed", f"record of {len(raw)} bytes exceeds {MAX_RECORD_BYTES}")
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        record = PeerRecord(
            kind=_pick(body["kind"], str), run=_pick(body["run"], str), peer_id=_pick(body["peer"], str),
            host=_pick(body["addr"][0], str), port=_pick(body["addr"][1], int), step=_pick(body["step"], int),
            weight=float(body["weight"]), anchor=_pick(body.get("anchor", ""), str), issued=float(body["issued"]), expires=float(body["expires"]),
            public_key=bytes.fromhex(body["key"]),
            cert_der=base64.b64decode(body["cert"], validate=True) if "cert" in body else b"", raw=bytes(raw),
            state=_pick(body.get("state", ""), str))
        signature = bytes.fromhex(envelope["sig"])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise RecordError("malformed", f"malformed record: {type(exc).__name__}: {exc}") from None
    if body.get("v") != 1 or record.kind not in KINDS or not math.isfinite(record.weight) or record.weight < 0:
        raise RecordError("malformed", f"record of {record.peer_id!r}: unknown version, kind or bad weight")
    if not verify(record.public_key, signature, _message(body)):
        raise RecordError("signature", f"record of {record.peer_id!r}: the Ed25519 signature does not verify")
    if record.kind == "member":
        _check_tls_signature(record, envelope.get("tls_sig"), _message(body))
    return record


def check_fresh(record: PeerRecord, now: float) -> None:
    """RecordError("expired") unless ``issued ≤ now + CLOCK_SKEW``, ``now < expires`` and
    the record claims at most MAX_TTL seconds of life."""
    if record.expires - record.issued > MAX_TTL + 1e-3 or record.issued > now + CLOCK_SKEW:
        raise RecordError("expired", f"record of {record.peer_id!r} claims too long a life or a future time")
    if now >= record.expires:
        raise RecordError("expired", f"record of {record.peer_id!r} expired {now - record.expires:.1f} s ago")


class Trust:
    """Admits records of one run from peers the project CA certified (see module docstring).

    Remembers the Ed25519 key each admitted member record introduced; a later member
    record may replace it (it is signed by the certificate's key, so only the holder
    of that certificate can).
    """

    def __init__(self, ca_pem: bytes, run: str) -> None:
        self.ca_pem = ca_pem
        self.run = run
        self.keys: dict[str, bytes] = {}

    def admit(self, raw: bytes, now: float) -> PeerRecord:
        record = parse_record(raw)
        check_fresh(record, now)
        if record.run != self.run:
            raise RecordError("run", f"record of {record.peer_id!r} is for run {record.run!r}, not {self.run!r}")
        if record.kind == "member":
            self._check_certificate(record)
            self.keys[record.peer_id] = record.public_key
        elif self.keys.get(record.peer_id) != record.public_key:
            raise RecordError("unknown-key", f"record of {record.peer_id!r} is signed by a key no member record "
                                             f"introduced ({record.public_key.hex()[:16]}…)")
        return record

    def _check_certificate(self, record: PeerRecord) -> None:
        pem = x509.load_der_x509_certificate(record.cert_der).public_bytes(serialization.Encoding.PEM)
        try:
            verify_chain(pem, self.ca_pem)
        except CertificateError as exc:
            raise RecordError("certificate", f"record of {record.peer_id!r}: {exc}") from None
        cert = x509.load_der_x509_certificate(record.cert_der)
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if not names or names[0].value != record.peer_id:
            raise RecordError("certificate", f"record of {record.peer_id!r} carries another peer's certificate")


def certificate_fingerprint(record: PeerRecord) -> str:
    """Hex SHA-256 of the certificate a member record carries (what the lane checks)."""
    return x509.load_der_x509_certificate(record.cert_der).fingerprint(hashes.SHA256()).hex()


def _message(body: dict[str, Any]) -> bytes:
    return DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _pick(value: object, kind: type) -> Any:
    if type(value) is not kind:  # bool is not int here
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def _check_tls_signature(record: PeerRecord, tls_sig: object, message: bytes) -> None:
    try:
        cert = x509.load_der_x509_certificate(record.cert_der)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(tls_sig, str):
            raise ValueError("no ECDSA certificate signature")
        key.verify(base64.b64decode(tls_sig, validate=True), message, ec.ECDSA(hashes.SHA256()))
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise RecordError("signature", f"member record of {record.peer_id!r}: the certificate's signature "
                                       f"does not verify ({type(exc).__name__})") from None
