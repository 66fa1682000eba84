"""Signing keys on disk, what a node signs, and the server's registry of node keys."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone

import blake3
import numpy as np
import pytest

from potluck.core.errors import AccessDenied, ConfigError, SignatureError
from potluck.core.params import Params, ParamsKind
from potluck.ledger.signing import (
    NodeKeys,
    derived_key,
    load_or_create_key,
    public_bytes,
    settings_digest,
    sign_update,
    update_statement,
    verify,
)
from potluck.transport.revocation import CertificateStamp

UPDATE = Params.from_arrays({"w": np.ones(3, np.float32)}, ParamsKind.DELTA)


UPDATE_DIGEST = blake3.blake3(UPDATE.encode()).hexdigest()  # what nodes sign: the pushed bytes' BLAKE3

def test_a_key_is_made_once_with_mode_0600_in_a_0700_folder(tmp_path):
    path = tmp_path / "keys" / "a.signing.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert public_bytes(load_or_create_key(path)) == public_bytes(key)  # read back, not made again
    assert [p.name for p in path.parent.iterdir()] == ["a.signing.key"]  # no temp file left


def test_a_key_others_can_read_or_that_is_no_ed25519_key_is_refused(tmp_path):
    path = tmp_path / "a.key"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match=r"accessible by others \(mode 0644\); run `chmod 600"):
        load_or_create_key(path)
    path.write_text("not a key")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_or_create_key(path)


def test_a_signature_covers_run_round_update_examples_and_settings():
    key = derived_key(7, "node:a")
    signed = sign_update(key, "run-1", 3, UPDATE, 40, {"lr": 0.1, "epochs": 1})
    good = update_statement("run-1", 3, UPDATE_DIGEST, 40, settings_digest({"epochs": 1, "lr": 0.1}))
    assert verify(signed.public_key, signed.signature, good)
    for changed in (update_statement("run-2", 3, UPDATE_DIGEST, 40, settings_digest({"lr": 0.1, "epochs": 1})),
                    update_statement("run-1", 4, UPDATE_DIGEST, 40, settings_digest({"lr": 0.1, "epochs": 1})),
                    update_statement("run-1", 3, "0" * 64, 40, settings_digest({"lr": 0.1, "epochs": 1})),
                    update_statement("run-1", 3, UPDATE_DIGEST, 41, settings_digest({"lr": 0.1, "epochs": 1})),
                    update_statement("run-1", 3, UPDATE_DIGEST, 40, settings_digest({"lr": 0.2, "epochs": 1}))):
        assert not verify(signed.public_key, signed.signature, changed)
    assert not verify(signed.public_key[:31], signed.signature, good)  # malformed: False, not an exception
    # The digest signed is the update's as a DELTA, whatever kind the caller held.
    assert sign_update(key, "run-1", 3, UPDATE.with_kind(ParamsKind.FULL), 40, {"lr": 0.1, "epochs": 1}) == signed


def test_simulated_keys_follow_from_the_seed():
    assert public_bytes(derived_key(1, "node:a")) == public_bytes(derived_key(1, "node:a"))
    assert public_bytes(derived_key(1, "node:a")) != public_bytes(derived_key(2, "node:a"))


def test_the_registry_refuses_a_new_key_unless_the_certificate_is_new_too(tmp_path):
    keys = NodeKeys(tmp_path / "node-keys.json")
    first, second = public_bytes(derived_key(0, "1")), public_bytes(derived_key(0, "2"))
    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    cert = [CertificateStamp(day + timedelta(days=i), i, f"cert-{i}") for i in range(4)]
    keys.register("a", first, cert[1])
    keys.register("a", first, cert[2])  # a renewed certificate, same key: fine
    with pytest.raises(AccessDenied, match=r"registered signing key .* a new key needs a new certificate"):
        keys.register("a", second, cert[2])
    keys.register("a", second, cert[3])  # re-issued by the CA: the key may change with it
    assert NodeKeys(tmp_path / "node-keys.json").key_of("a") == second  # kept across restarts
    plain = NodeKeys()
    plain.register("b", first)
    with pytest.raises(AccessDenied):
        plain.register("b", second)  # no certificates (--insecure): never
    with pytest.raises(SignatureError, match="an Ed25519 public key has 32"):
        plain.register("c", b"short")
