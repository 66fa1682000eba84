"""The ledger view: each entry of ``ledger.jsonl`` with its hash and signatures, and the
verdict of :func:`potluck.ledger.audit.audit_ledger` (the chain, every signature and
Merkle root, the checkpoints' digests), naming the first bad entry.

An audit reads every checkpoint, so its verdict is kept until one of the files it reads
changes (its size or modification time, or a file appears or goes): looking again at
an unchanged run costs a directory listing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from potluck.core.errors import LedgerError, RunDirError, UnknownId
from potluck.core.files import reason
from potluck.core.layout import RunLayout
from potluck.ledger.audit import LedgerAudit, audit_ledger
from potluck.ledger.chain import Entry, entry_hash, read_ledger_file

MAX_PROBLEMS = 100
_HEADER_FIELDS = ("kind", "round", "time", "run_id", "prev", "signature", "model_digest", "strategy_digest",
                  "contributions_root", "contributions_count", "settings_digest", "examples", "attempts",
                  "failures", "privacy", "server_key", "task", "simulation")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: Path) -> Fingerprint:
    """Name, size and modification time of every file the audit reads."""
    layout = RunLayout(path)
    files = [layout.ledger_file, layout.config_file]
    if layout.checkpoints.is_dir():
        files.extend(sorted(layout.checkpoints.iterdir()))
    out = []
    for file in files:
        try:
            st = os.stat(file)
        except OSError:
            continue
        out.append((file.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


class LedgerViews:
    """The ledger view of each run, recomputed only when its :func:`fingerprint` changed."""

    def __init__(self) -> None:
        self._cache: dict[Path, tuple[Fingerprint, dict[str, Any]]] = {}

    def view(self, path: Path) -> dict[str, Any]:
        key = fingerprint(path)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        view = ledger_view(path)
        self._cache[path] = (key, view)
        return view


def ledger_view(path: Path) -> dict[str, Any]:
    """The audit's verdict and one row per line of the run's ``ledger.jsonl``.

    ``present`` is false (with a ``message``) when the run keeps no ledger (yet).
    """
    layout = RunLayout(path)
    try:
        audit = audit_ledger(layout.path)
        read = read_ledger_file(layout.ledger_file)
    except RunDirError as exc:
        return {"present": False, "message": str(exc)}
    except OSError as exc:
        return {"present": False, "message": f"cannot read {layout.ledger_file}: {reason(exc)}"}
    return {"present": True, **verdict(audit), "torn": read.torn,
            "entries": [_row(index, entry, audit) for index, entry in enumerate(read.entries)]}


def verdict(audit: LedgerAudit) -> dict[str, Any]:
    """Whether the ledger verifies; if not, the first bad entry and what is wrong with it."""
    first = audit.problems[0] if audit.problems else None
    return {
        "ok": audit.ok, "summary": audit.summary(), "head": audit.head, "notes": list(audit.notes),
        "first_bad": None if first is None else {"entry": first.entry, "message": first.message},
        "problems": [{"entry": p.entry, "message": p.message} for p in audit.problems[:MAX_PROBLEMS]],
        "problem_count": len(audit.problems),
    }


def _row(index: int, entry: Entry | None, audit: LedgerAudit) -> dict[str, Any]:
    problems = [p.message for p in audit.problems if p.entry == index]
    row: dict[str, Any] = {"index": index, "parsed": entry is not None, "problems": problems}
    if entry is None:
        return row
    row.update({k: entry[k] for k in _HEADER_FIELDS if k in entry})
    row["hash"] = _hash(entry)
    row["absent"] = list(entry.get("absent", []))
    return row


def ledger_entry(path: Path, index: int) -> Mapping[str, Any]:
    """Line ``index`` of the run's ``ledger.jsonl`` as written, contributions (node,
    update digest, weight, key, signature) included; :class:`UnknownId` when there is no
    such entry, :class:`LedgerError` when that line is not a JSON object."""
    layout = RunLayout(path)
    try:
        read = read_ledger_file(layout.ledger_file)
    except OSError as exc:
        raise RunDirError(f"cannot read {layout.ledger_file}: {reason(exc)}") from exc
    if not 0 <= index < len(read.entries):
        raise UnknownId(f"{layout.ledger_file} has no entry {index} (it holds {len(read.entries)})")
    entry = read.entries[index]
    if entry is None:
        raise LedgerError(f"line {index + 1} of {layout.ledger_file.name} is not a JSON object")
    return {**entry, "hash": _hash(entry)}


def _hash(entry: Entry) -> str | None:
    """The entry's hash; None when an edited line holds what canonical JSON refuses (NaN)."""
    try:
        return entry_hash(entry)
    except (ValueError, TypeError):
        return None
