"""`potluck ledger verify`'s engine: one changed byte anywhere fails it, naming the entry."""

from __future__ import annotations

import pytest

from ledger_kit import SERVER_KEY, make_run
from potluck.apps.check import check_run_dir
from potluck.ledger.audit import audit_ledger
from potluck.ledger.signing import public_bytes


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run")


def lines(run) -> list[bytes]:
    return run.ledger_file.read_bytes().splitlines(keepends=True)


def flip_in_value(run, entry: int, key: str, *, nth: int = 0, offset: int = 5) -> None:
    """Change one hex digit of the ``nth`` value of ``key`` in line ``entry`` (JSON stays valid)."""
    data = lines(run)
    line = bytearray(data[entry])
    start = -1
    for _ in range(nth + 1):
        start = line.index(f'"{key}":"'.encode(), start + 1)
    pos = start + len(key) + 4 + offset
    line[pos] = ord("0") if line[pos] != ord("0") else ord("1")
    data[entry] = bytes(line)
    run.ledger_file.write_bytes(b"".join(data))


def first_failure(run) -> str:
    audit = audit_ledger(run.path)
    assert not audit.ok
    return str(audit.problems[0])


def test_an_untouched_ledger_verifies(run):
    audit = audit_ledger(run.path, server_key=public_bytes(SERVER_KEY).hex())
    assert audit.ok and len(audit.entries) == 4 and audit.problems == []
    assert audit.summary().endswith(f"entries 0 to 3, head {audit.head}")


def test_a_changed_byte_in_a_past_entry_fails_at_that_entry(run):
    flip_in_value(run, 1, "model_digest")
    assert first_failure(run) == "entry 1: the server's signature does not verify"
    assert any(str(p).startswith("entry 2: its prev is") for p in audit_ledger(run.path).problems)


def test_a_changed_byte_in_a_signature_fails_at_that_entry(run):
    flip_in_value(run, 2, "signature", nth=3)  # after the three contributions' signatures: the server's
    assert first_failure(run) == "entry 2: the server's signature does not verify"


def test_a_changed_byte_in_a_contribution_fails_at_that_entry(run):
    flip_in_value(run, 3, "update", nth=1)
    assert first_failure(run) == "entry 3: the Merkle root of its contributions is not the one its header names"


def test_a_forged_node_signature_fails_even_with_the_root_recomputed(run):
    import json

    from potluck.ledger.chain import canonical, contributions_root, signed_bytes

    data = lines(run)
    entry = json.loads(data[2])
    entry["contributions"][1]["weight"] = 1000  # b claims more examples; the server re-roots and re-signs
    entry["contributions_root"] = contributions_root(entry["contributions"])
    entry.pop("signature")
    contributions = entry.pop("contributions")
    entry["signature"] = SERVER_KEY.sign(signed_bytes(entry)).hex()
    entry["contributions"] = contributions
    data[2] = canonical(entry) + b"\n"
    run.ledger_file.write_bytes(b"".join(data))
    problems = [str(p) for p in audit_ledger(run.path).problems]
    assert problems[0] == "entry 2: contribution 1 (b): the node's signature does not verify"


def test_a_changed_byte_in_a_checkpoint_fails_at_its_entry(run):
    model = run.model_path(2)
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    assert first_failure(run).startswith("entry 2: the model checkpoints/round-0002.safetensors does not match "
                                         "the digest the entry records")


def test_a_truncated_ledger_fails_naming_the_cut_entry(run):
    data = run.ledger_file.read_bytes()
    run.ledger_file.write_bytes(data[: len(data) - 100])  # the last line cut short
    assert first_failure(run).startswith("entry 3: ledger.jsonl ends with a torn line after entry 2")
    run.ledger_file.write_bytes(b"".join(lines(run)[:2]))  # whole entries removed
    problems = [str(p) for p in audit_ledger(run.path).problems]
    assert problems[0].startswith("entry 2: round 2 is committed (round-0002.json exists) but its entry is missing")
    assert problems[1].startswith("entry 3: round 3 is committed")


def test_a_byte_that_breaks_the_json_fails_at_that_line(run):
    data = lines(run)
    data[1] = b"#" + data[1][1:]
    run.ledger_file.write_bytes(b"".join(data))
    assert first_failure(run) == "entry 1: line 2 of ledger.jsonl is not a JSON object"


def test_a_pinned_server_key_must_be_the_runs(run):
    audit = audit_ledger(run.path, server_key="ab" * 32)
    assert str(audit.problems[0]).startswith("entry 0: it names server key")


def test_check_reports_a_ledger_line_that_disagrees_with_its_mark(run):
    assert check_run_dir(run.path).ok
    flip_in_value(run, 2, "model_digest")
    report = check_run_dir(run.path)
    assert [(f.code, f.round) for f in report.findings if f.level == "broken"] == [("ledger-line-differs", 2)]
