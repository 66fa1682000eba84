"""The ledger as the server keeps it and as a node watches it: chain, proofs, forks, rewrites."""

from __future__ import annotations

import json

import pytest

from ledger_kit import (
    RUN_ID,
    entries_of,
    make_run,
    new_ledger,
    params_for,
    public_hex,
    record,
    rewrite,
    serving,
    update_for,
)
from potluck.core.digests import update_digest
from potluck.core.errors import LedgerError, RunDirError
from potluck.ledger.chain import ZERO_HASH, canonical, entry_hash, header_problem
from potluck.ledger.signing import derived_key
from potluck.ledger.watch import LedgerMismatch, LedgerWatch
from potluck.runtime.rundir import RunDirectory


def test_entries_chain_carry_the_round_and_are_committed_in_the_marks(tmp_path):
    run = make_run(tmp_path / "run", absent_in={2: (("d", "timed_out"),)})
    entries = entries_of(run)
    assert [e["kind"] for e in entries] == ["run_started", "round", "round", "round"]
    assert entries[0]["prev"] == ZERO_HASH and entries[0]["run_id"] == RUN_ID
    for i in range(1, 4):
        assert entries[i]["prev"] == entry_hash(entries[i - 1])
        assert entries[i]["model_digest"] == run.read_mark(i)["model_sha256"]
        assert [c["node"] for c in entries[i]["contributions"]] == ["a", "b", "c"]
        assert entries[i]["privacy"] == {"epsilon": 0.5 * i}
    assert entries[2]["absent"] == [{"node": "d", "reason": "timed_out"}]
    assert entries[2]["failures"] == {"timed_out": 1}
    lines = run.ledger_file.read_bytes().splitlines()
    assert lines == [canonical(e) for e in entries]  # ledger.jsonl is the marks' entries, canonical
    assert run.ledger.head().hash == entry_hash(entries[-1])


def test_headers_since_and_own_inclusion_proofs(tmp_path):
    run = make_run(tmp_path / "run")
    ledger, entries = run.ledger, entries_of(run)
    headers, more = ledger.headers_since(entry_hash(entries[1]), limit=1)
    assert more and [json.loads(h)["round"] for h in headers] == [2]
    headers, more = ledger.headers_since("", limit=10)
    assert not more and len(headers) == 4 and all(b"contributions\"" not in h for h in headers)
    with pytest.raises(LedgerError, match="is not an entry of run run-1's ledger"):
        ledger.headers_since("ab" * 32)
    proof = ledger.proof(1, "b")  # round 1 is read back from its mark
    assert proof.contribution["node"] == "b" and proof.size == 3
    assert proof.root().hex() == entries[1]["contributions_root"]
    assert ledger.proof(1, "nobody") is None
    with pytest.raises(LedgerError, match="round 9 is not committed"):
        ledger.proof(9, "a")


def test_resume_restores_the_head_and_refuses_another_server_key_or_an_edited_line(tmp_path):
    run = make_run(tmp_path / "run")
    head = run.ledger.head()
    again = RunDirectory(run.path)
    again.attach_ledger(new_ledger())
    assert again.prepare_resume().round == 3 and again.ledger.head() == head
    again.commit(record(4), params_for(4), {})
    assert header_problem(again.ledger_entry(4), 4, head.hash, bytes.fromhex(entries_of(run)[0]["server_key"])) is None

    other = RunDirectory(run.path)
    other.attach_ledger(new_ledger(derived_key(1, "another server")))
    with pytest.raises(RunDirError, match="signed by server key .* resume with the key the run started with"):
        other.prepare_resume()

    lines = run.ledger_file.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace('"examples":30', '"examples":31')
    run.ledger_file.write_text("".join(lines))
    edited = RunDirectory(run.path)
    edited.attach_ledger(new_ledger())
    with pytest.raises(RunDirError, match=r"line 2 is not the ledger entry in round-0001\.json"):
        edited.prepare_resume()


# -- what a node sees ---------------------------------------------------------------------

class Node:
    """A node watching a server's ledger; it sent an update in every round it is asked about."""

    def __init__(self, node: str, state=None) -> None:
        self.node = node
        self.watch = LedgerWatch(node, public_hex(node), state)
        self.watch.start(RUN_ID, 0)

    def sends(self, rnd: int) -> None:
        self.watch.sent(rnd, update_digest(update_for(self.node, rnd)))

    def sees(self, server, upto: int | None = None) -> list[str]:
        head = server.head() if upto is None else _Head(entry_hash(server.loader(upto)))
        return self.watch.observe(head.hash, lambda h: server.headers_since(h, limit=2),
                                  lambda r: server.proof(r, self.node))


class _Head:
    def __init__(self, hash_: str) -> None:
        self.hash = hash_


def test_an_honest_ledger_passes_every_check_round_by_round(tmp_path):
    run = make_run(tmp_path / "run", absent_in={3: (("d", "rejected"),)})
    server = serving(entries_of(run))
    a, d = Node("a"), Node("d")
    for rnd in (1, 2, 3):
        a.sends(rnd)
        assert a.sees(server, rnd) == []
    d.sends(3)
    assert d.sees(server) == ["round 3: this node's update was not aggregated (rejected, says the server)"]
    assert a.watch.head == server.head().hash and a.watch.state["sent"] == {}


def test_a_node_detects_a_rewrite_of_a_round_it_had_verified(tmp_path):
    run = make_run(tmp_path / "run")
    honest = entries_of(run)
    a = Node("a")
    for rnd in (1, 2):
        a.sends(rnd)
    a.sees(serving(honest), 2)
    seen = a.watch.head
    liar = serving(rewrite(honest, 1, drop="a"))  # a's round-1 update silently removed, re-signed, re-chained
    with pytest.raises(LedgerMismatch, match="no longer has entry 2 .* rewritten or forked"):
        a.sees(liar)
    assert a.watch.head == seen  # what it verified is kept


def test_a_node_detects_its_update_dropped_from_a_round_it_had_not_seen_yet(tmp_path):
    run = make_run(tmp_path / "run")
    a, b = Node("a"), Node("b")
    for node in (a, b):
        node.sends(1)
    liar = serving(rewrite(entries_of(run), 1, drop="a"))
    with pytest.raises(LedgerMismatch, match="took this node's update .* neither includes it nor lists the node"):
        a.sees(liar)
    assert b.sees(liar, 1) == []  # b's own contribution is there: b cannot tell (see docs/ledger.md)


def test_a_node_detects_an_update_recorded_in_its_name(tmp_path):
    run = make_run(tmp_path / "run")
    c = Node("c")  # c never sent anything, yet the ledger holds its contributions
    with pytest.raises(LedgerMismatch, match="records an update .* that it did not send"):
        c.sees(serving(entries_of(run)))
    impostor = Node("a")
    impostor.watch.public_key = public_hex("b")  # a node whose registered key is another
    impostor.sends(1)
    with pytest.raises(LedgerMismatch, match="which is not this node's key"):
        impostor.sees(serving(entries_of(run)), 1)


def test_a_node_detects_a_ledger_signed_by_another_server_key(tmp_path):
    run = make_run(tmp_path / "run")
    a = Node("a")
    a.sends(1)
    a.sees(serving(entries_of(run)), 1)
    other = derived_key(5, "impostor")
    forged = rewrite(entries_of(run), 2, drop="nobody", key=other)  # entries 2, 3 re-signed with another key
    with pytest.raises(LedgerMismatch, match="the server's signature does not verify"):
        a.sees(_ServedAs(forged))


class _ServedAs:
    """Serves entries without checking them (a server does not check itself)."""

    def __init__(self, entries) -> None:
        self.entries = entries
        self.loader = lambda r: entries[r]

    def head(self):
        return _Head(entry_hash(self.entries[-1]))

    def headers_since(self, head, limit=256):
        hashes = [entry_hash(e) for e in self.entries]
        first = hashes.index(head) + 1 if head else 0
        return [canonical({k: v for k, v in e.items() if k != "contributions"}) for e in self.entries[first:]], False

    def proof(self, rnd, node):
        return None


def test_the_view_survives_a_restart_and_a_new_run_starts_afresh(tmp_path):
    run = make_run(tmp_path / "run")
    state = tmp_path / "a.ledger-state.json"
    a = Node("a", state)
    a.sends(1)
    a.sees(serving(entries_of(run)), 1)
    restarted = Node("a", state)
    assert restarted.watch.head == a.watch.head and restarted.watch.state["server_key"]
    with pytest.raises(LedgerMismatch):
        restarted.sees(serving(rewrite(entries_of(run), 1, drop="a")))
    restarted.watch.start("another-run", 0)
    assert restarted.watch.head == ""


def test_an_update_sent_before_a_rejoin_may_be_missing_without_alarm(tmp_path):
    """A server that restarts redoes the rounds it had not committed, maybe without this node:
    what the node sent before it rejoined is no longer owed a place (said as a warning)."""
    run = make_run(tmp_path / "run")
    redone = serving(rewrite(entries_of(run), 1, drop="a"))
    a = Node("a")
    a.sends(1)
    a.watch.start(RUN_ID, 0)  # the server went away; the node rejoined the same run
    assert a.sees(redone, 1) == ["round 1: this node's update, sent before it rejoined, is not in the round: the "
                                 "server restarted or lost it before committing the round, and redid it without "
                                 "this node"]
