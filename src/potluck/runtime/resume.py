"""Resume: bring a run directory back to exactly its last committed round k.

Resume checks before it changes anything: the marks are contiguous (0..k), round k's
files match the digests in its mark, and, when the run keeps a ledger, the marks'
entries chain and are signed by this server's key, and every complete line of
``ledger.jsonl`` is its mark's entry (a line that differs was edited afterwards).
Only then it tidies: removes leftovers (temp files and round k+1's files), drops
``model.safetensors`` (the continued run writes it again), completes ``ledger.jsonl``
from the marks and rewrites ``metrics.jsonl`` from them. Each step is idempotent, so a
resume killed while it tidies is resumed again the same way.

A gap in the marks or a file that does not match its mark cannot come from a kill: the
folder was changed or damaged afterwards. Resume then refuses with a
:class:`RunDirError` naming the round and file instead of quietly skipping or redoing
a round that was reported as committed; ``potluck check`` lists every such problem.
It verifies rounds 0 and k, the ones it reads; ``potluck check`` verifies them all.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from potluck.core.errors import LedgerError, RunDirError
from potluck.core.files import atomic_write, reason, remove
from potluck.ledger import chain as ledger_format
from potluck.ledger.chain import Entry

if TYPE_CHECKING:  # rundir.py calls into this module; the run is only read here
    from potluck.runtime.rundir import CommittedRound, RunDirectory


def prepare_resume(run: RunDirectory) -> CommittedRound:
    """The last committed round, with the folder brought back to exactly that state.

    Raises :class:`RunDirError` when no round is committed, the marks have a gap or
    the last round's files do not match its mark; the folder is then left as it was.
    """
    last = _last_round(run)
    try:
        committed = run.load(last)
        marks = [run.read_mark(r) for r in range(last + 1)]
    except RunDirError as exc:
        raise RunDirError(f"{exc}{_drop_hint(run, last)}") from exc
    entries = _checked_ledger(run, marks)
    for leftover in [*run.leftovers(last), run.model_file]:
        remove(leftover)
    if entries:
        atomic_write(run.ledger_file, b"".join(ledger_format.canonical(e) + b"\n" for e in entries))
    _rebuild_metrics(run, [mark["record"] for mark in marks[1:]])
    return committed


def _last_round(run: RunDirectory) -> int:
    """The last committed round, once the marks before it are all there."""
    rounds = run.committed_rounds()
    if not rounds:
        raise RunDirError(f"{run.path} has no committed round to resume from")
    last = rounds[-1]
    gaps = sorted(set(range(last + 1)) - set(rounds))
    if gaps:
        raise RunDirError(
            f"{run.path}: round {', '.join(map(str, gaps))} has no commit mark although round {last} has; "
            f"the folder was changed after it was written (run `potluck check {run.path}`)"
        )
    return last


def _drop_hint(run: RunDirectory, last: int) -> str:
    """How to resume from the round before a damaged last one, if there is one."""
    if not last:
        return ""
    ledger = (f" and the last line of {run.ledger_file} (nodes that verified round {last} will report "
              "a rewritten ledger)" if run.ledger_file.exists() else "")
    return f"; to resume from round {last - 1} instead, delete {run.checkpoints}/round-{last:04d}.*{ledger}"


def _checked_ledger(run: RunDirectory, marks: list[dict[str, Any]]) -> list[Entry]:
    """The ledger entries of the marks, checked against ``ledger.jsonl`` and restored
    into the run's ledger; [] for a run without one."""
    entries = [m["ledger"] for m in marks if isinstance(m.get("ledger"), dict)]
    if not entries and run.ledger is None:
        return []
    if len(entries) != len(marks):
        which = "the run keeps no ledger" if not entries else "some commit marks hold no ledger entry"
        raise RunDirError(f"{run.path}: {which}; it cannot be continued with one "
                          f"(run `potluck check {run.path}`)")
    _check_ledger_file(run, entries)
    if run.ledger is not None:
        try:
            run.ledger.restore(entries)
        except LedgerError as exc:
            raise RunDirError(f"{run.path}: {exc}") from exc
    return entries


def _check_ledger_file(run: RunDirectory, entries: list[Entry]) -> None:
    """Every complete line of ``ledger.jsonl`` is its mark's entry, and none is of a
    round without a mark."""
    try:
        on_disk = ledger_format.read_ledger_file(run.ledger_file).entries
    except OSError as exc:
        raise RunDirError(f"cannot read {run.ledger_file}: {reason(exc)}") from exc
    for index, line in enumerate(on_disk):
        if index >= len(entries):  # the append comes after the mark: no crash leaves this
            raise RunDirError(f"{run.ledger_file} holds entry {index}, but round {index} is not committed (its "
                              f"commit mark was removed); to continue from round {len(entries) - 1}, keep only "
                              f"the first {len(entries)} lines (nodes that verified round {index} will report a "
                              "rewritten ledger)")
        if line != entries[index]:
            raise RunDirError(f"{run.ledger_file} line {index + 1} is not the ledger entry in "
                              f"{run.mark_path(index).name}: the file was changed after it was written "
                              f"(run `potluck ledger verify {run.path}`)")


def _rebuild_metrics(run: RunDirectory, records: list[dict[str, Any]]) -> None:
    """``metrics.jsonl`` from the marks' records (rounds 1..k)."""
    lines = [json.dumps(record, sort_keys=True) for record in records]
    # Rewriting metrics.jsonl fsyncs the run folder: model.safetensors stays removed
    # even after a power cut, before any new round commits.
    atomic_write(run.metrics_file, ("\n".join(lines) + "\n" if lines else "").encode())
