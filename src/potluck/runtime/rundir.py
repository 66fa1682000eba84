"""The run directory, its commit protocol, and what holds after a crash.

Layout::

    config.toml                          the resolved configuration of the run
    checkpoints/round-0007.safetensors   global model after round 7 (round 0: initial)
    checkpoints/round-0007.strategy.safetensors   strategy state after round 7
    checkpoints/round-0007.json          the round's record + file digests: the commit mark
    metrics.jsonl                        one JSON line per committed round from 1
    (with --keep-checkpoints N, older rounds' model and strategy files are removed; marks stay)
    ledger.jsonl                         the provenance ledger: entry k per committed round k
    model.safetensors                    the final model
    report.png                           the task's primary metric and loss per round

Commit of round k: the model, then the strategy state, each written with
:func:`~potluck.core.files.atomic_write` (temp file, fsync, rename, fsync of the
folder); then the mark ``round-k.json``, which holds the round's record, the SHA-256
of both files and, when the run keeps a ledger, ledger entry k (sealed by
:class:`~potluck.ledger.chain.Ledger`), written the same way. Round k is committed iff
its mark exists. The entry is then appended to ``ledger.jsonl`` (fsynced), and the
record to ``metrics.jsonl``.

Why the ledger entry lives in the mark: the mark's rename is the one atomic step of a
commit, so putting the entry inside it makes "round k is in the ledger" and "round k is
committed" the same fact. There is no moment at which the ledger names a round whose
checkpoints are not durable, nor a committed round missing from the ledger: a kill
before the rename leaves neither, after it both. ``ledger.jsonl`` is the append-only,
readable copy of the entries; like ``metrics.jsonl`` it can only lag the marks by the
last entry, and resume completes it from the marks after checking that every complete
line is its mark's entry (a line that differs was edited afterwards: resume refuses).

Invariants. They hold whenever the writing process is killed, at any point (training,
aggregation, a checkpoint write, an append), and ``potluck check`` verifies them:

1. Committed rounds are contiguous: marks exist for rounds 0..k and no others.
2. Every mark's model and strategy files exist, match the SHA-256 the mark names and
   decode as parameters (both are complete and durable before the mark is written).
3. No partially written file is ever visible under its final name. A killed write
   leaves at most a temp file ``.NAME.tmp-PID``; a cut-short commit may leave round
   k+1's complete model or strategy file without a mark. Neither counts as committed.
4. ``metrics.jsonl`` holds the records of rounds 1..k in order, each equal to the one
   in its mark, and none of an uncommitted round, with one exception: a kill between
   the mark and the append leaves the line of round k missing or torn. Nothing is
   lost, the record is in the mark.
5. ``model.safetensors``, when present, is the model of round k.
6. In a run that keeps a ledger, every mark 0..k holds its entry (mark 0: the "run
   started" entry), the entries chain (each names the hash of the one before), and
   ``ledger.jsonl`` holds entries 0..k in order, each equal to the one in its mark, and
   none of an uncommitted round; with the same exception as invariant 4, a kill between
   the mark and the append leaves the line of entry k missing or torn.

Resume (:meth:`RunDirectory.prepare_resume`, in :mod:`potluck.runtime.resume`) picks
up exactly after round k, and refuses a folder that was changed after a kill (a gap in
the marks, a file that does not match its mark) instead of quietly skipping or redoing
a round that was reported as committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potluck.core.errors import LedgerError, ParamsError, RunDirError
from potluck.core.files import append_line, atomic_write, fsync_dir, is_temp_file, reason, remove
from potluck.core.layout import RunLayout, checkpoint_kept
from potluck.core.params import Params
from potluck.core.records import RoundRecord
from potluck.ledger import chain as ledger_format
from potluck.ledger.chain import Entry, Ledger
from potluck.runtime import resume
from potluck.strategies.base import Strategy


@dataclass(frozen=True)
class CommittedRound:
    """A committed round read back, its files checked against the digests in its mark."""

    round: int
    params: Params
    strategy_state: dict[str, np.ndarray]
    record: RoundRecord


class RunDirectory(RunLayout):
    """A run directory's commit protocol and resume (its file layout: :class:`RunLayout`)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.ledger: Ledger | None = None  # set with attach_ledger: every commit then seals an entry
        self._keeps: tuple[int, int] | None = None  # (keep_checkpoints, keep_every), read once from config.toml

    def attach_ledger(self, ledger: Ledger) -> None:
        """Seal a ledger entry into every commit from now on; ``ledger`` reads older
        entries back from the marks."""
        self.ledger = ledger
        ledger.loader = self.ledger_entry

    # -- lifecycle ----------------------------------------------------------------

    def create(self, config_toml: str) -> None:
        """Start a new run here; refuse a folder that holds a run with a committed round.

        A folder whose run was stopped before round 0 was committed is started afresh;
        one holding later checkpoints without any mark was edited, and is refused.
        """
        if self.config_file.exists() and self.committed_rounds():
            raise RunDirError(f"{self.path} already holds a run: pass --resume to continue it, or another --run-dir")
        later = [p.name for p in self.leftovers(0) if not is_temp_file(p.name)]
        if self.config_file.exists() and later:  # no marks, yet rounds after 0: edited, not stopped
            raise RunDirError(f"{self.path} holds checkpoints ({later[0]}, …) but no commit mark; "
                              f"run `potluck check {self.path}`, or use another --run-dir")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            fsync_dir(self.path.parent)
        except OSError as exc:
            raise RunDirError(f"cannot create run directory {self.path}: {reason(exc)}") from exc
        for leftover in [*self.leftovers(-1), self.ledger_file]:  # nothing committed: no ledger either
            remove(leftover)
        atomic_write(self.config_file, config_toml.encode())

    def read_config(self) -> str:
        try:
            return self.config_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RunDirError(f"{self.path} holds no run to resume (no config.toml)") from None

    # -- commit -------------------------------------------------------------------

    def commit(self, record: RoundRecord, params: Params, strategy_state: dict[str, np.ndarray]) -> None:
        """Make round ``record.round`` durable (see the module docstring for the order).

        Raises :class:`RunDirError` (disk full, read-only, …) saying whether the round
        was committed; earlier rounds are intact either way.
        """
        rnd = record.round
        model_bytes = params.encode()
        state_bytes = Params.from_arrays(strategy_state, copy=False).encode()
        mark: dict[str, Any] = {
            "record": record.to_json(),
            "model_sha256": hashlib.sha256(model_bytes).hexdigest(),
            "strategy_sha256": hashlib.sha256(state_bytes).hexdigest(),
        }
        entry = None
        if self.ledger is not None:
            entry = mark["ledger"] = self.ledger.seal(record, mark["model_sha256"], mark["strategy_sha256"])
        try:
            atomic_write(self.model_path(rnd), model_bytes)
            atomic_write(self.strategy_path(rnd), state_bytes)
            atomic_write(self.mark_path(rnd), json.dumps(mark, sort_keys=True).encode())
        except RunDirError as exc:
            if self.mark_path(rnd).exists():  # only the folder fsync after the rename failed
                raise RunDirError(f"{exc}; round {rnd} was committed but may not survive a power cut") from exc
            self._discard_uncommitted(rnd)
            kept = f"; round {rnd - 1} and earlier are intact" if rnd > 0 else ""
            raise RunDirError(f"{exc}; round {rnd} was not committed{kept}") from exc
        if entry is not None and self.ledger is not None:
            self.ledger.advance(entry)
            try:
                append_line(self.ledger_file, ledger_format.canonical(entry).decode())
            except RunDirError as exc:
                raise RunDirError(f"{exc}; round {rnd} is committed and --resume completes ledger.jsonl") from exc
        if rnd > 0:
            try:
                append_line(self.metrics_file, json.dumps(record.to_json(), sort_keys=True))
            except RunDirError as exc:
                raise RunDirError(f"{exc}; round {rnd} is committed and --resume rebuilds metrics.jsonl") from exc
            self._prune(rnd)

    def _prune(self, last: int) -> None:
        """Remove the model and strategy files ``--keep-checkpoints`` no longer keeps
        (layout: ``core/layout.py``); marks stay. Files a crash left unpruned go next time."""
        if self._keeps is None:
            self._keeps = self.keeps()
        keep, every = self._keeps
        if keep <= 0:
            return
        for rnd in self.committed_rounds():
            if not checkpoint_kept(rnd, last, keep, every):
                for path in (self.model_path(rnd), self.strategy_path(rnd)):
                    with contextlib.suppress(OSError):  # a file that stays only costs disk
                        path.unlink(missing_ok=True)

    def on_commit(self, record: RoundRecord, params: Params, strategy: Strategy) -> None:
        self.commit(record, params, strategy.state())

    def write_final(self, params: Params) -> None:
        atomic_write(self.model_file, params.encode())

    def _discard_uncommitted(self, rnd: int) -> None:
        # Frees the space a full disk needs; harmless to keep when even that fails.
        for path in (self.model_path(rnd), self.strategy_path(rnd)):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    # -- reading back -------------------------------------------------------------

    def ledger_entry(self, rnd: int) -> Entry:
        """Ledger entry ``rnd`` from its commit mark; :class:`LedgerError` if it has none."""
        entry = self.read_mark(rnd).get("ledger")
        if not isinstance(entry, dict):
            raise LedgerError(f"{self.mark_path(rnd)} holds no ledger entry")
        return entry

    def load(self, rnd: int) -> CommittedRound:
        """Model, strategy state and record of committed round ``rnd``, digests checked."""
        mark = self.read_mark(rnd)
        files = (("model", self.model_path(rnd), "model_sha256"), ("strategy state", self.strategy_path(rnd), "strategy_sha256"))
        contents = []
        for what, path, key in files:
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise RunDirError(f"round {rnd}: cannot read the {what} {path}: {reason(exc)}") from exc
            if hashlib.sha256(data).hexdigest() != mark[key]:
                raise RunDirError(f"round {rnd}: the {what} {path} does not match the SHA-256 its commit mark names")
            contents.append(data)
        try:
            params = Params.decode(contents[0])
            state = dict(Params.decode(contents[1]))
        except ParamsError as exc:
            raise RunDirError(f"round {rnd} in {self.path}: {exc}") from exc
        return CommittedRound(rnd, params, state, RoundRecord.from_json(mark["record"]))

    def prepare_resume(self) -> CommittedRound:
        """The last committed round, with the folder brought back to exactly that state
        (see :mod:`potluck.runtime.resume`); :class:`RunDirError` leaves it as it was."""
        return resume.prepare_resume(self)

    def records(self) -> list[RoundRecord]:
        """The records in ``metrics.jsonl``; a torn last line (being appended) is skipped."""
        if not self.metrics_file.exists():
            return []
        complete = self.metrics_file.read_text(encoding="utf-8").split("\n")[:-1]
        return [RoundRecord.from_json(json.loads(line)) for line in complete if line.strip()]
