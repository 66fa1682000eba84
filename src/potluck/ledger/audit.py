"""``potluck ledger verify``: recompute everything a run's ledger claims, from the files alone.

For every line of ``ledger.jsonl``, in order: the entry is entry k (kind, round), names
the hash of entry k−1, carries the server's valid signature (key from entry 0, or the
one the auditor pins), its contributions hash to the Merkle root and count its header
names and each carries a valid node signature; the entry equals the one in round k's
commit mark; and the checkpoints on disk match the model and strategy digests it
records. Entry 0's configuration digest must match ``config.toml``. Then the file must
hold every committed round, and nothing torn.

Every problem is reported with the entry it concerns; the first is the one to read.
Nothing is changed on disk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potluck.core.errors import RunDirError
from potluck.core.files import reason
from potluck.core.layout import RunLayout
from potluck.ledger.chain import (
    ZERO_HASH,
    Entry,
    contributions_problem,
    entry_hash,
    header_problem,
    read_ledger_file,
)


@dataclass(frozen=True)
class LedgerProblem:
    """``entry`` is the entry's index (= its round); ``None`` for the file as a whole."""

    entry: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.entry is None else f"entry {self.entry}: {self.message}"


@dataclass
class LedgerAudit:
    run_dir: Path
    entries: list[Entry] = field(default_factory=list)
    problems: list[LedgerProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    head: str = ""  # hash of the last entry on file

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, entry: int | None, message: str) -> None:
        self.problems.append(LedgerProblem(entry, message))

    def summary(self) -> str:
        if self.ok:
            last = len(self.entries) - 1
            return (f"{self.run_dir}: the ledger verifies: entries 0 to {last}, head {self.head}" if last >= 0
                    else f"{self.run_dir}: the ledger is empty")
        first = self.problems[0]
        return f"{self.run_dir}: the ledger does not verify; first failure: {first}"


def audit_ledger(path: Path, *, server_key: str | None = None) -> LedgerAudit:
    """Verify the ledger of the run directory at ``path`` (see the module docstring).

    ``server_key`` (hex) pins the key entry 0 must name. Raises :class:`RunDirError`
    when ``path`` is not a run directory that keeps a ledger.
    """
    run = RunLayout(Path(path))
    marked = run.committed_rounds()
    if not run.ledger_file.exists() and not marked:
        raise RunDirError(f"{run.path} is not a run directory (no ledger.jsonl, no checkpoints/round-*.json)")
    audit = LedgerAudit(run.path)
    try:
        read = read_ledger_file(run.ledger_file)
    except OSError as exc:
        raise RunDirError(f"cannot read {run.ledger_file}: {reason(exc)}") from exc
    prev, key, run_id = ZERO_HASH, b"", ""
    known_keys: dict[str, str] = {}
    for index, entry in enumerate(read.entries):
        if entry is None:
            audit.fail(index, f"line {index + 1} of {run.ledger_file.name} is not a JSON object")
            prev = ""
            continue
        if index == 0:
            key, run_id = _genesis(run, entry, server_key, audit)
        problem = header_problem(entry, index, prev, key)
        if problem is not None:
            audit.fail(index, problem)
        if entry.get("run_id") != run_id:
            audit.fail(index, f"it is for run {entry.get('run_id')!r}, entry 0 for {run_id!r}")
        problem = contributions_problem(entry, run_id)
        if problem is not None:
            audit.fail(index, problem)
        else:
            _note_key_changes(entry, known_keys, audit)
        _check_against_disk(run, index, entry, marked, audit)
        audit.entries.append(entry)
        prev = entry_hash(entry)
    audit.head = prev if read.entries and read.entries[-1] is not None else ""
    if read.torn:
        audit.fail(len(read.entries), f"{run.ledger_file.name} ends with a torn line after entry "
                                      f"{len(read.entries) - 1}: cut off while appended or truncated since "
                                      "(a crash leaves this; --resume completes the file from the commit marks)")
    for rnd in marked:
        if rnd >= len(read.entries) and not (read.torn and rnd == len(read.entries)):
            audit.fail(rnd, f"round {rnd} is committed ({run.mark_path(rnd).name} exists) but its entry is "
                            f"missing from {run.ledger_file.name} (a crash between commit and append leaves "
                            "the last one missing; --resume completes the file from the commit marks)")
    return audit


def _genesis(run: RunLayout, entry: Entry, pinned: str | None, audit: LedgerAudit) -> tuple[bytes, str]:
    """The server key and run id every later entry is checked with."""
    key_hex = str(entry.get("server_key", ""))
    if pinned is not None and key_hex != pinned.lower():
        audit.fail(0, f"it names server key {key_hex[:16]}…, not the pinned {pinned[:16]}…")
        key_hex = pinned
    if entry.get("simulation"):
        audit.notes.append("a simulation: node and server keys are derived from the run seed, so the signatures "
                           "show that nothing changed since, not who trained")
    try:
        config = run.config_file.read_bytes()
    except OSError:
        audit.fail(0, "config.toml cannot be read, so its digest cannot be checked")
    else:
        if hashlib.sha256(config).hexdigest() != entry.get("config_sha256"):
            audit.fail(0, "config.toml does not match the configuration digest entry 0 records")
    try:
        return bytes.fromhex(key_hex), str(entry.get("run_id", ""))
    except ValueError:
        return b"", str(entry.get("run_id", ""))


def _note_key_changes(entry: Entry, known: dict[str, str], audit: LedgerAudit) -> None:
    for c in entry.get("contributions", []):
        node, key = c.get("node"), c.get("key")
        if node in known and known[node] != key:
            audit.notes.append(f"entry {entry.get('round')}: node {node} signs with a new key "
                               f"{str(key)[:16]}… (was {known[node][:16]}…): a key rotation, which the server "
                               "accepts only with a newly issued certificate")
        known[str(node)] = str(key)


def _check_against_disk(run: RunLayout, index: int, entry: Entry, marked: list[int], audit: LedgerAudit) -> None:
    if index not in marked:
        audit.fail(index, f"round {index} is not committed (no {run.mark_path(index).name}), yet the ledger "
                          "has its entry")
        return
    try:
        mark: dict[str, Any] = run.read_mark(index)
    except RunDirError as exc:
        audit.fail(index, str(exc))
        return
    if mark.get("ledger") != entry:
        audit.fail(index, f"it differs from the entry in its commit mark {run.mark_path(index).name}")
    for what, file, key in (("model", run.model_path(index), "model_digest"),
                            ("strategy state", run.strategy_path(index), "strategy_digest")):
        try:
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
        except FileNotFoundError as exc:
            if not run.pruned(index, max(marked)):  # else removed by --keep-checkpoints: its mark stays
                audit.fail(index, f"the {what} {file.relative_to(run.path)} cannot be read: {reason(exc)}")
            continue
        except OSError as exc:
            audit.fail(index, f"the {what} {file.relative_to(run.path)} cannot be read: {reason(exc)}")
            continue
        if digest != entry.get(key):
            audit.fail(index, f"the {what} {file.relative_to(run.path)} does not match the digest the entry "
                              f"records ({str(entry.get(key))[:16]}…): it changed after the commit")
