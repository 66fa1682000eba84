"""Signed membership records: sign, verify, expire, and refuse unknown keys or foreign CAs."""

from __future__ import annotations

import json

import pytest

from potluck.peer.identity import issue_peer, load_identity
from potluck.peer.records import MAX_TTL, RecordError, Trust, make_record, parse_record
from potluck.transport.certs import init_ca

pytest_plugins = ["peer_kit"]  # peer_tls, identities

NOW = 1_800_000_000.0
ADDR = ("127.0.0.1", 4000)


def test_a_member_record_round_trips_and_is_admitted(identities, peer_tls):
    raw = make_record(identities[0], "member", "run-a", ADDR, step=3, now=NOW, ttl=6)
    trust = Trust((peer_tls / "ca.crt").read_bytes(), "run-a")
    record = trust.admit(raw, NOW + 1)
    assert (record.peer_id, record.address, record.step, record.kind) == ("peer-0", ADDR, 3, "member")
    assert record.public_key == identities[0].public_key
    assert trust.keys == {"peer-0": identities[0].public_key}
    assert len(raw) < 2048


def test_a_record_expires_after_its_ttl(identities, peer_tls):
    trust = Trust((peer_tls / "ca.crt").read_bytes(), "run-a")
    raw = make_record(identities[0], "member", "run-a", ADDR, step=0, now=NOW, ttl=6)
    with pytest.raises(RecordError) as err:
        trust.admit(raw, NOW + 6.0)
    assert err.value.reason == "expired"
    with pytest.raises(RecordError, match="in \\(0, 60"):
        make_record(identities[0], "member", "run-a", ADDR, step=0, now=NOW, ttl=MAX_TTL + 1)


def test_a_record_from_the_future_is_refused(identities, peer_tls):
    trust = Trust((peer_tls / "ca.crt").read_bytes(), "run-a")
    raw = make_record(identities[0], "member", "run-a", ADDR, step=0, now=NOW + 60, ttl=6)
    with pytest.raises(RecordError, match="future"):
        trust.admit(raw, NOW)


def test_a_tampered_record_fails_its_signature(identities):
    raw = make_record(identities[1], "ready", "run-a", ADDR, step=2, now=NOW, ttl=6, weight=10)
    envelope = json.loads(raw)
    envelope["body"]["weight"] = 1000.0
    with pytest.raises(RecordError) as err:
        parse_record(json.dumps(envelope).encode())
    assert err.value.reason == "signature"


def test_ready_records_need_a_key_a_member_record_introduced(identities, peer_tls):
    trust = Trust((peer_tls / "ca.crt").read_bytes(), "run-a")
    ready = make_record(identities[1], "ready", "run-a", ADDR, step=2, now=NOW, ttl=6, weight=10)
    with pytest.raises(RecordError) as err:
        trust.admit(ready, NOW)
    assert err.value.reason == "unknown-key"
    trust.admit(make_record(identities[1], "member", "run-a", ADDR, step=2, now=NOW, ttl=6), NOW)
    assert trust.admit(ready, NOW).weight == 10


def test_a_member_of_another_ca_or_run_is_ignored(identities, peer_tls, tmp_path):
    other = tmp_path / "other"
    init_ca(other)
    issue_peer(other, "peer-0")
    stranger = load_identity(other, "peer-0", tmp_path / "k.pem")
    trust = Trust((peer_tls / "ca.crt").read_bytes(), "run-a")
    with pytest.raises(RecordError) as err:
        trust.admit(make_record(stranger, "member", "run-a", ADDR, step=0, now=NOW, ttl=6), NOW)
    assert err.value.reason == "certificate"
    with pytest.raises(RecordError) as err:
        trust.admit(make_record(identities[0], "member", "run-b", ADDR, step=0, now=NOW, ttl=6), NOW)
    assert err.value.reason == "run"


def test_a_copied_certificate_with_another_key_is_refused(identities, peer_tls):
    """peer-1 puts peer-0's (public) certificate in its record: the TLS signature fails."""
    raw = make_record(identities[1], "member", "run-a", ADDR, step=0, now=NOW, ttl=6)
    envelope = json.loads(raw)
    good = json.loads(make_record(identities[0], "member", "run-a", ADDR, step=0, now=NOW, ttl=6))
    body = envelope["body"]
    body["cert"], body["peer"] = good["body"]["cert"], "peer-0"
    body_bytes = b"potluck.peer.record.v1\n" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    envelope["sig"] = identities[1].signing_key.sign(body_bytes).hex()
    with pytest.raises(RecordError) as err:
        Trust((peer_tls / "ca.crt").read_bytes(), "run-a").admit(json.dumps(envelope).encode(), NOW)
    assert err.value.reason == "signature"


@pytest.mark.parametrize("raw", [b"", b"{}", b"[1]", b'{"body": {"kind": "member"}, "sig": ""}', b"x" * 5000])
def test_malformed_records_say_so(raw):
    with pytest.raises(RecordError) as err:
        parse_record(raw)
    assert err.value.reason == "malformed"
