"""What ``potluck ledger`` shows of a run's ledger, from ``ledger.jsonl`` alone.

- :func:`history`: one row per entry (round, time, model digest, participants, …);
- :func:`accounts`: per node, the rounds it contributed to, the examples it brought,
  and how often its update was left out, and why;
- :func:`export_proof` / :func:`check_proof`: a self-contained inclusion proof a node
  (or anyone) can check against a round's root without the run directory.

``potluck ledger verify`` is :func:`potluck.ledger.audit.audit_ledger`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from potluck.core.errors import LedgerError, RunDirError
from potluck.core.files import reason
from potluck.ledger import merkle
from potluck.ledger.audit import audit_ledger
from potluck.ledger.chain import (
    Entry,
    canonical,
    contribution_statement,
    entry_hash,
    header_of,
    read_ledger_file,
    signed_bytes,
)
from potluck.ledger.signing import verify

__all__ = ["accounts", "audit_ledger", "check_proof", "export_proof", "history", "read_entries"]

PROOF_FORMAT = "potluck.inclusion-proof.v1"
ABSENT_REASONS = ("rejected", "failed", "timed_out", "left", "discarded")


def read_entries(run_dir: Path) -> list[Entry]:
    """The complete, parseable entries of ``RUN_DIR/ledger.jsonl`` (a torn tail is skipped)."""
    path = Path(run_dir) / "ledger.jsonl"
    if not path.exists():
        raise RunDirError(f"{run_dir} holds no ledger (no ledger.jsonl)")
    try:
        read = read_ledger_file(path)
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {reason(exc)}") from exc
    entries = []
    for number, entry in enumerate(read.entries, start=1):
        if entry is None:
            raise LedgerError(f"{path} line {number} is not a ledger entry (run `potluck ledger verify {run_dir}`)")
        entries.append(entry)
    return entries


# -- show ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    round: int
    time: str
    model_digest: str
    participants: tuple[str, ...]
    examples: int
    absent: tuple[tuple[str, str], ...]
    epsilon: float | None
    entry_hash: str


def history(entries: list[Entry]) -> list[Row]:
    rows = []
    for e in entries:
        rows.append(Row(
            round=int(e.get("round", -1)), time=str(e.get("time", "")), model_digest=str(e.get("model_digest", "")),
            participants=tuple(str(c.get("node")) for c in e.get("contributions", [])),
            examples=int(e.get("examples", 0)),
            absent=tuple((str(a.get("node")), str(a.get("reason"))) for a in e.get("absent", [])),
            epsilon=(e.get("privacy") or {}).get("epsilon"), entry_hash=entry_hash(e),
        ))
    return rows


# -- contributions -----------------------------------------------------------------------

@dataclass
class Account:
    """One node's record over the run. ``rounds``: rounds its update was aggregated in;
    ``examples``: their total weight; the other counts: rounds it was asked in and its
    update was left out, by reason (``rejected``: refused by the server)."""

    node: str
    rounds: int = 0
    examples: int = 0
    rejected: int = 0
    failed: int = 0
    timed_out: int = 0
    left: int = 0
    discarded: int = 0
    first_round: int | None = None
    last_round: int | None = None
    keys: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def accounts(entries: list[Entry]) -> list[Account]:
    by_node: dict[str, Account] = {}
    for e in entries:
        rnd = int(e.get("round", -1))
        for c in e.get("contributions", []):
            a = by_node.setdefault(str(c.get("node")), Account(str(c.get("node"))))
            a.rounds += 1
            a.examples += int(c.get("weight", 0))
            a.first_round = rnd if a.first_round is None else a.first_round
            a.last_round = rnd
            if c.get("key") and c.get("key") not in a.keys:
                a.keys.append(str(c.get("key")))
        for absent in e.get("absent", []):
            a = by_node.setdefault(str(absent.get("node")), Account(str(absent.get("node"))))
            why = str(absent.get("reason"))
            if why in ABSENT_REASONS:
                setattr(a, why, getattr(a, why) + 1)
    return sorted(by_node.values(), key=lambda a: a.node)


# -- proofs ------------------------------------------------------------------------------

def export_proof(entries: list[Entry], node: str, rnd: int) -> dict[str, Any]:
    """``node``'s inclusion proof in round ``rnd``: the signed header, the leaf, the path.

    Raises :class:`LedgerError` when the round is not in the ledger or holds no
    contribution of ``node``.
    """
    if not 1 <= rnd < len(entries):
        raise LedgerError(f"round {rnd} is not in this ledger (it holds rounds 1 to {len(entries) - 1})")
    entry = entries[rnd]
    contributions = entry.get("contributions", [])
    index = next((i for i, c in enumerate(contributions) if c.get("node") == node), None)
    if index is None:
        why = {a.get("node"): a.get("reason") for a in entry.get("absent", [])}.get(node)
        raise LedgerError(f"round {rnd} holds no contribution of node {node!r}"
                          + (f" (it was absent: {why})" if why else ""))
    tree = merkle.MerkleTree([canonical(c) for c in contributions])
    return {
        "format": PROOF_FORMAT, "run_id": entry.get("run_id"), "round": rnd, "node": node,
        "server_key": entries[0].get("server_key"), "entry_hash": entry_hash(entry), "header": header_of(entry),
        "leaf_index": index, "tree_size": tree.size, "contribution": contributions[index],
        "path": [h.hex() for h in tree.path(index)],
    }


@dataclass(frozen=True)
class ProofCheck:
    ok: bool
    lines: tuple[str, ...]  # one per check, "ok ..." or "FAIL ..."


def check_proof(doc: Mapping[str, Any], *, server_key: str | None = None, entry: str | None = None,
                root: str | None = None) -> ProofCheck:
    """Check a document from :func:`export_proof`. ``server_key``, ``entry`` and ``root``
    (hex) are what the checker knows independently (the key it pinned, the head or
    root it saw); without them the document's own values are used, and said so."""
    lines: list[str] = []
    ok = True

    def report(good: bool, text: str) -> None:
        nonlocal ok
        ok = ok and good
        lines.append(f"{'ok  ' if good else 'FAIL'}  {text}")

    try:
        header = dict(doc["header"])
        contribution = dict(doc["contribution"])
        index, size = int(doc["leaf_index"]), int(doc["tree_size"])
        path = [bytes.fromhex(h) for h in doc["path"]]
        key_hex = server_key or str(doc.get("server_key", ""))
    except (KeyError, TypeError, ValueError) as exc:
        return ProofCheck(False, (f"FAIL  not an inclusion proof document: {exc}",))
    if doc.get("format") != PROOF_FORMAT:
        report(False, f"unknown format {doc.get('format')!r}")
    hashed = entry_hash(header)
    report(hashed == doc.get("entry_hash"), f"the header hashes to {hashed}")
    if entry is not None:
        report(hashed == entry.lower(), f"it is the entry you know ({entry[:16]}…)")
    try:
        signed = verify(bytes.fromhex(key_hex), bytes.fromhex(str(header.get("signature", ""))), signed_bytes(header))
    except ValueError:
        signed = False
    source = "the key you gave" if server_key else "the key the document names; pin it with --server-key"
    report(signed, f"the server's signature on the header verifies with {key_hex[:16]}… ({source})")
    found = merkle.root_from_path(canonical(contribution), index, size, path)
    claimed = str(header.get("contributions_root", ""))
    report(found is not None and found.hex() == claimed and size == header.get("contributions_count"),
           f"leaf {index} of {size} leads to the round's Merkle root {claimed[:16]}…")
    if root is not None:
        report(claimed == root.lower(), f"that root is the one you know ({root[:16]}…)")
    report(contribution.get("node") == doc.get("node"), f"the leaf is the contribution of node {contribution.get('node')!r}")
    try:
        statement = contribution_statement(str(header.get("run_id")), int(header.get("round", -1)),
                                           str(header.get("settings_digest", "")), contribution)
        node_signed = verify(bytes.fromhex(str(contribution.get("key", ""))),
                             bytes.fromhex(str(contribution.get("signature", ""))), statement)
    except (KeyError, TypeError, ValueError):
        node_signed = False
    report(node_signed, f"the node's signature over update {str(contribution.get('update'))[:16]}… "
                        f"({contribution.get('weight')} examples) verifies with its key")
    return ProofCheck(ok, tuple(lines))
