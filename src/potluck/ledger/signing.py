"""Ed25519 identities: key files, what a node signs, and the server's registry of keys.

Every node and the server have an Ed25519 signing key, made on first start and kept in
a PEM (PKCS#8) file of mode 0600 in a folder of mode 0700; a key file readable by
others is refused. A node registers its public key when it joins; the server binds it
to the node id its TLS certificate proves (:class:`NodeKeys`), and lets it change only
with a newer certificate.

What a node signs for each update (:func:`update_statement`), as compact JSON::

    ["potluck.update.v1", run id, round, update digest, examples, settings digest]

The update digest is the BLAKE3 of the update's canonical encoding as a DELTA — the
bytes the node pushes, so it equals the transport digest (``core.digests.payload_digest``):
one fast hash on each side instead of two (SHA-256 runs at a third of BLAKE3's speed
here). The settings digest is the SHA-256 of the instruction's
configuration (:func:`settings_digest`). So a signature pins who sent which update,
for which run and round, with what weight, trained under which settings.

Simulation only: :func:`derived_key` makes a virtual node's key from the run seed.
Anyone who knows the seed can sign as any virtual node, so a simulated ledger proves
integrity (nothing changed since), never who trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from potluck.core.digests import settings_digest, update_digest, update_statement
from potluck.core.errors import AccessDenied, ConfigError, SignatureError
from potluck.core.files import atomic_write, reason
from potluck.core.messages import ConfigDict, UpdateSignature
from potluck.core.params import Params
from potluck.transport.revocation import CertificateStamp

log = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64

SigningKey = Ed25519PrivateKey


# -- keys -----------------------------------------------------------------------------

def public_bytes(key: SigningKey) -> bytes:
    """The raw 32-byte public key (what travels at join and is recorded in the ledger)."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derived_key(seed: int, name: str) -> SigningKey:
    """A key made from the run seed and a name: **simulation only** (see module docstring)."""
    material = hashlib.sha256(f"potluck.simulation-key.v1:{seed}:{name}".encode()).digest()
    return Ed25519PrivateKey.from_private_bytes(material)


def load_or_create_key(path: Path) -> SigningKey:
    """The Ed25519 key in ``path``, made (mode 0600, folder 0700) if there is none.

    Raises :class:`ConfigError` when the file is not an Ed25519 key, or is readable or
    writable by group or others (as ssh does, a key others can read is not a secret).
    """
    path = Path(path)
    if not path.exists():
        _create(path)
    try:
        mode = path.stat().st_mode
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {reason(exc)}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"signing key {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
                          f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 signing key")
    return key


def _create(path: Path) -> None:
    """Write a new key so that no other process ever sees a partial or readable file:
    a 0600 temp file, fsync, then a hard link to the final name (which fails, rather than
    replace, if another process made the key first)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # made by another process meanwhile: use that one
    except OSError as exc:
        raise ConfigError(f"cannot create signing key {path}: {reason(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("made a new Ed25519 signing key %s (public key %s)", path, public_bytes(key).hex())


def verify(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public_key``'s over ``message``; never raises."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


# -- what a node signs ----------------------------------------------------------------

def check_signature(node_id: str, key: bytes | None, signature: bytes, statement: bytes) -> UpdateSignature:
    """``node_id``'s signature over an update statement, checked with the ``key`` it
    registered; :class:`SignatureError` saying what is wrong (missing, or not verifying)."""
    if not signature or key is None:
        raise SignatureError(f"the update from {node_id!r} is not signed"
                             + ("" if key else " and the node registered no key") + "; this server requires signed updates")
    if not verify(key, signature, statement):
        raise SignatureError(f"the signature on the update from {node_id!r} does not verify with the key it registered "
                             f"({key.hex()[:16]}…): it covers run, round, update digest, examples and settings")
    return UpdateSignature(key, signature)


def sign_update(key: SigningKey, run_id: str, rnd: int, update: Params, num_examples: int,
                config: ConfigDict) -> UpdateSignature:
    message = update_statement(run_id, rnd, update_digest(update), num_examples, settings_digest(config))
    return UpdateSignature(public_bytes(key), key.sign(message))


# -- the server's registry --------------------------------------------------------------

class StaleCertificate(AccessDenied):
    """A node presented a new signing key with a certificate no newer than the one its
    registered key came with: an older (perhaps leaked) certificate cannot replace a key."""


@dataclass(frozen=True)
class _Registered:
    key: bytes
    certificate: CertificateStamp | None  # None: registered without TLS (--insecure)


class NodeKeys:
    """Node id → the public key it registered, bound to its TLS certificate.

    The first join registers the node's key. A later join with the same key is fine
    (a renewed certificate included; the newest certificate seen stays on record). A
    different key is accepted only together with a *newer* certificate
    (:class:`~potluck.transport.revocation.CertificateStamp`: later validity start,
    then larger serial), i.e. one the CA's operator issued again for that node id
    (``potluck certs issue node ID``): that is the documented way to replace a lost or
    leaked key, and the rotation is logged. A different key under the same
    certificate, or without certificates (``--insecure``), is refused with
    :class:`AccessDenied`; under an older certificate with :class:`StaleCertificate`.

    ``path`` (JSON, written atomically) keeps the registry across server restarts;
    ``None`` keeps it in memory.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._keys: dict[str, _Registered] = {}
        if path is not None and path.exists():
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                self._keys = {str(k): _Registered(bytes.fromhex(v["key"]), _stamp_from_json(v)) for k, v in raw.items()}
            except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
                raise ConfigError(f"{path} is not a node key registry: {exc}") from exc

    def key_of(self, node_id: str) -> bytes | None:
        entry = self._keys.get(node_id)
        return entry.key if entry else None

    def certificate_of(self, node_id: str) -> CertificateStamp | None:
        """The newest certificate ``node_id`` registered its key with (None: unknown, or no TLS)."""
        entry = self._keys.get(node_id)
        return entry.certificate if entry else None

    def register(self, node_id: str, public_key: bytes, certificate: CertificateStamp | None = None) -> None:
        """Record ``node_id``'s key, or refuse a changed one (see the class docstring).

        ``certificate`` is the stamp of the node's TLS certificate (None without TLS).
        """
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise SignatureError(f"node {node_id!r} sent a signing key of {len(public_key)} bytes; "
                                 f"an Ed25519 public key has {PUBLIC_KEY_BYTES}")
        old = self._keys.get(node_id)
        if old is not None and old.key != public_key:
            _check_rotation(node_id, old, public_key, certificate)
            log.warning("node %s rotated its signing key %s… → %s… with a newer certificate (%s)", node_id,
                        old.key.hex()[:16], public_key.hex()[:16], certificate.describe() if certificate else "-")
        elif old is not None and (certificate is None or (old.certificate is not None and certificate <= old.certificate)):
            return  # the same key: the newest certificate seen stays on record
        self._keys[node_id] = _Registered(public_key, certificate)
        if self.path is not None:
            atomic_write(self.path, json.dumps({k: _entry_json(v) for k, v in self._keys.items()},
                                               indent=1, sort_keys=True).encode())

    def snapshot(self) -> Mapping[str, bytes]:
        return {k: v.key for k, v in self._keys.items()}


def _check_rotation(node_id: str, old: _Registered, key: bytes, certificate: CertificateStamp | None) -> None:
    """Refuse ``node_id``'s new ``key`` unless ``certificate`` is newer than the registered one."""
    was, now = old.key.hex()[:16], key.hex()[:16]
    same = certificate is not None and old.certificate is not None and certificate.sha256 == old.certificate.sha256
    if certificate is None or same:
        raise AccessDenied(f"node {node_id!r} registered signing key {was}… before and now presents {now}…; "
                           f"a new key needs a new certificate for the node (`potluck certs issue node {node_id}`)")
    if old.certificate is not None and certificate <= old.certificate:
        raise StaleCertificate(
            f"node {node_id!r} registered signing key {was}… with its certificate ({old.certificate.describe()}) "
            f"and now presents key {now}… with an older one ({certificate.describe()}): a new key needs a "
            f"certificate issued after the registered one (`potluck certs issue node {node_id}`); if the older "
            f"certificate leaked, revoke it (`potluck certs revoke {node_id} --cert FILE`)")


def _entry_json(entry: _Registered) -> dict[str, str]:
    out = {"key": entry.key.hex(), "certificate": ""}
    if entry.certificate is not None:
        c = entry.certificate
        out.update(certificate=c.sha256, serial=f"{c.serial:x}", not_before=c.not_before.isoformat())
    return out


def _stamp_from_json(v: Mapping[str, str]) -> CertificateStamp | None:
    """The stamp a registry entry keeps; one written before stamps were kept orders first."""
    if not v.get("certificate"):
        return None
    not_before = datetime.fromisoformat(v["not_before"]) if v.get("not_before") else datetime.min.replace(tzinfo=timezone.utc)
    return CertificateStamp(not_before, int(v.get("serial") or "0", 16), str(v["certificate"]))
