"""``check``: verify a run directory's invariants, without changing anything in it.

Each invariant of :mod:`potluck.runtime.rundir` becomes one or more :class:`Finding`:
``ok`` when it holds, ``broken`` when it does not, and ``note`` for what a killed run
legitimately leaves behind and ``--resume`` tidies (temp files, the files of a round
whose commit was cut short, a missing or torn last line of ``metrics.jsonl``).

>>> report = check_run_dir(Path("runs/a"))            # doctest: +SKIP
>>> report.ok, [f.message for f in report.findings if f.level == "broken"]  # doctest: +SKIP
(True, [])
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from potluck.core.errors import ParamsError, RunDirError
from potluck.core.files import is_temp_file, reason
from potluck.core.params import Params
from potluck.ledger.chain import entry_hash, read_ledger_file
from potluck.runtime.rundir import RunDirectory

Level = Literal["ok", "note", "broken"]


@dataclass(frozen=True)
class Finding:
    """One line of the report. ``code`` is stable for scripts; ``message`` is for people.

    ``path`` is relative to the run directory; ``round`` is set when one round is concerned.
    """

    level: Level
    code: str
    message: str
    path: str | None = None
    round: int | None = None


@dataclass(frozen=True)
class CheckReport:
    run_dir: Path
    committed: tuple[int, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when no invariant is broken (notes are fine)."""
        return all(f.level != "broken" for f in self.findings)

    @property
    def last_round(self) -> int | None:
        return self.committed[-1] if self.committed else None

    def summary(self) -> str:
        if not self.ok:
            broken = sum(f.level == "broken" for f in self.findings)
            return f"{self.run_dir}: {broken} problem{'s' if broken > 1 else ''} found, the run directory is not consistent"
        last = "no round committed yet" if self.last_round is None else f"last committed round {self.last_round}"
        return f"{self.run_dir}: all invariants hold ({last})"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "ok": self.ok, "last_round": self.last_round,
            "committed": list(self.committed), "findings": [asdict(f) for f in self.findings],
        }


def check_run_dir(path: Path) -> CheckReport:
    """Verify every invariant of the run directory at ``path``; only reads.

    Raises :class:`RunDirError` only when ``path`` is not a run directory (missing, not
    a folder, or holding neither config.toml nor a commit mark); every inconsistency is
    a finding instead.
    """
    run = RunDirectory(Path(path))
    if not run.path.exists():
        raise RunDirError(f"{run.path} does not exist")
    if not run.path.is_dir():
        raise RunDirError(f"{run.path} is not a directory")
    marked = run.committed_rounds()
    if not run.config_file.exists() and not marked:
        raise RunDirError(f"{run.path} is not a run directory (no config.toml, no checkpoints/round-*.json)")
    findings: list[Finding] = []
    if run.config_file.exists():
        findings.append(Finding("ok", "config", "config.toml is present", "config.toml"))
    else:
        findings.append(Finding("broken", "config-missing", "config.toml is missing, so the run cannot be resumed",
                                "config.toml"))
    marks = _check_marks(run, marked, findings)
    if marks:
        _check_checkpoints(run, marks, findings)
        _check_metrics(run, marks, max(marked), findings)
        _check_final_model(run, marks, max(marked), findings)
        _check_ledger(run, marks, max(marked), findings)
    _note_leftovers(run, max(marked, default=-1), findings)
    return CheckReport(run.path, tuple(marked), tuple(findings))


def _rel(run: RunDirectory, path: Path) -> str:
    return str(path.relative_to(run.path))


def _check_marks(run: RunDirectory, marked: list[int], findings: list[Finding]) -> dict[int, dict[str, Any]]:
    """Readable marks by round; findings for unreadable marks and gaps."""
    if not marked:
        findings.append(Finding("note", "nothing-committed",
                                "no round is committed yet: the run stopped before round 0 was committed "
                                "(starting it again begins afresh)"))
        return {}
    marks: dict[int, dict[str, Any]] = {}
    for rnd in marked:
        try:
            marks[rnd] = run.read_mark(rnd)
        except RunDirError as exc:
            findings.append(Finding("broken", "mark-unreadable", str(exc).replace(f"{run.path}/", ""),
                                    _rel(run, run.mark_path(rnd)), rnd))
    last = marked[-1]
    gaps = sorted(set(range(last + 1)) - set(marked))
    for rnd in gaps:
        findings.append(Finding(
            "broken", "mark-missing",
            f"round {rnd} has no commit mark ({_rel(run, run.mark_path(rnd))}) although round {last} is committed: "
            "marks must run 0, 1, 2, … without a gap", _rel(run, run.mark_path(rnd)), rnd))
    if not gaps:
        span = "round 0 is committed" if last == 0 else f"rounds 0 to {last} are committed"
        findings.append(Finding("ok", "marks", f"{span}, with no gap"))
    return marks


def _check_checkpoints(run: RunDirectory, marks: dict[int, dict[str, Any]], findings: list[Finding]) -> None:
    before, last = len(findings), max(marks, default=0)
    for rnd, mark in marks.items():
        for what, path, key in (("model", run.model_path(rnd), "model_sha256"),
                                ("strategy state", run.strategy_path(rnd), "strategy_sha256")):
            problem = _file_problem(path, mark[key])
            if problem is not None and problem[0] == "file-missing" and run.pruned(rnd, last):
                continue  # removed by --keep-checkpoints: its mark stays
            if problem is not None:
                code, words = problem
                findings.append(Finding("broken", code, f"round {rnd}: {_rel(run, path)} (the {what}) {words}",
                                        _rel(run, path), rnd))
    if len(findings) == before:
        findings.append(Finding("ok", "checkpoints",
                                f"{len(marks)} models and strategy states match the SHA-256 in their commit marks "
                                "and decode as parameters"))


def _file_problem(path: Path, sha256: str) -> tuple[str, str] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "file-missing", "is missing"
    except OSError as exc:
        return "file-unreadable", f"cannot be read: {reason(exc)}"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "digest-mismatch", "does not match the SHA-256 its commit mark names: it changed after the commit"
    try:
        Params.decode(data)
    except ParamsError as exc:
        return "not-parameters", f"does not decode as parameters: {exc}"
    return None


def _check_metrics(run: RunDirectory, marks: dict[int, dict[str, Any]], last: int, findings: list[Finding]) -> None:
    name = run.metrics_file.name
    before = len(findings)
    try:
        text = run.metrics_file.read_text(encoding="utf-8") if run.metrics_file.exists() else ""
    except (OSError, UnicodeDecodeError) as exc:
        words = reason(exc) if isinstance(exc, OSError) else "it is not UTF-8 text"
        findings.append(Finding("broken", "metrics-unreadable", f"{name} cannot be read: {words}", name))
        return
    if not run.metrics_file.exists() and last > 1:
        findings.append(Finding("broken", "metrics-missing",
                                f"{name} is missing although rounds 1 to {last} are committed", name))
        return
    segments = text.split("\n")
    if segments[-1]:
        findings.append(Finding("note", "metrics-torn",
                                f"{name} ends with a torn line (a write was cut off): harmless, --resume rewrites "
                                "the file from the commit marks", name))
    seen: dict[int, int] = {}  # round -> line number
    for number, line in enumerate(segments[:-1], start=1):
        try:
            entry = json.loads(line)
            rnd = entry["round"]
        except (ValueError, TypeError, KeyError):
            rnd = None
        if not isinstance(rnd, int) or isinstance(rnd, bool) or rnd < 1:
            findings.append(Finding("broken", "metrics-bad-line", f"{name} line {number} is not a round record", name))
        elif rnd in seen:
            findings.append(Finding("broken", "metrics-duplicate",
                                    f"{name} has round {rnd} twice (lines {seen[rnd]} and {number})", name, rnd))
        elif rnd > last:
            findings.append(Finding("broken", "metrics-uncommitted",
                                    f"{name} line {number} is for round {rnd}, which is not committed", name, rnd))
        else:
            seen[rnd] = number
            if rnd in marks and entry != marks[rnd]["record"]:
                findings.append(Finding("broken", "metrics-differs",
                                        f"{name} line {number} (round {rnd}) differs from the record in "
                                        f"{_rel(run, run.mark_path(rnd))}", name, rnd))
    if list(seen) != sorted(seen):
        findings.append(Finding("broken", "metrics-order", f"{name} lists rounds out of order", name))
    unlisted = [rnd for rnd in range(1, last + 1) if rnd not in seen]
    findings.extend(_unappended(name, "metrics", unlisted, last, held="the record", resume="rewrites"))
    if len(findings) == before and last > 0:
        findings.append(Finding("ok", "metrics", f"{name} holds the records of rounds 1 to {last}, as in their marks",
                                name))


def _unappended(name: str, kind: str, rounds: list[int], last: int, *, held: str, resume: str) -> list[Finding]:
    """Findings for committed ``rounds`` that ``name``, an append-only copy of what the
    marks hold, has no line for: the last round's is a note (the run stopped between
    commit and append; its mark holds ``held`` and ``--resume`` ``resume`` the file), an
    earlier one's is broken."""
    return [
        Finding("note", f"{kind}-trailing", f"{name} has no line yet for round {rnd}, the last committed round: "
                f"the run stopped between commit and append; {held} is in its mark and --resume {resume} the file",
                name, rnd)
        if rnd == last else
        Finding("broken", f"{kind}-missing", f"{name} has no line for committed round {rnd}", name, rnd)
        for rnd in rounds
    ]


def _check_final_model(run: RunDirectory, marks: dict[int, dict[str, Any]], last: int, findings: list[Finding]) -> None:
    name = run.model_file.name
    if last not in marks:
        return  # its unreadable mark is already reported
    if not run.model_file.exists():
        findings.append(Finding("note", "final-absent", f"no {name} yet: the run has not finished", name))
        return
    try:
        digest = hashlib.sha256(run.model_file.read_bytes()).hexdigest()
    except OSError as exc:
        findings.append(Finding("broken", "final-unreadable", f"{name} cannot be read: {reason(exc)}", name))
        return
    if digest == marks[last]["model_sha256"]:
        findings.append(Finding("ok", "final", f"{name} is the model of round {last}, the last committed round", name))
        return
    same = [r for r, mark in marks.items() if mark["model_sha256"] == digest]
    which = f" (it is the model of round {same[-1]})" if same else ""
    findings.append(Finding("broken", "final-differs",
                            f"{name} is not the model of round {last}, the last committed round{which}", name))


def _check_ledger(run: RunDirectory, marks: dict[int, dict[str, Any]], last: int, findings: list[Finding]) -> None:
    """Invariant 6: the marks' ledger entries chain and match their checkpoints, and
    ``ledger.jsonl`` is their copy. Signatures and Merkle roots: ``potluck ledger verify``."""
    name = run.ledger_file.name
    entries = {rnd: mark["ledger"] for rnd, mark in marks.items() if isinstance(mark.get("ledger"), dict)}
    if not entries and not run.ledger_file.exists():
        return  # a run directory written without a ledger (by hand, or by a test harness)
    before = len(findings)
    for rnd, mark in sorted(marks.items()):
        entry = entries.get(rnd)
        where = _rel(run, run.mark_path(rnd))
        if entry is None:
            findings.append(Finding("broken", "ledger-entry-missing", f"round {rnd}: {where} holds no ledger entry",
                                    where, rnd))
            continue
        if entry.get("round") != rnd or entry.get("model_digest") != mark["model_sha256"] \
                or entry.get("strategy_digest") != mark["strategy_sha256"]:
            findings.append(Finding("broken", "ledger-entry-differs",
                                    f"round {rnd}: the ledger entry in {where} is not for this round's checkpoints",
                                    where, rnd))
        if rnd - 1 in entries and entry.get("prev") != entry_hash(entries[rnd - 1]):
            findings.append(Finding("broken", "ledger-chain",
                                    f"round {rnd}: the ledger entry in {where} does not name the hash of round "
                                    f"{rnd - 1}'s entry", where, rnd))
    try:
        read = read_ledger_file(run.ledger_file)
    except OSError as exc:
        findings.append(Finding("broken", "ledger-unreadable", f"{name} cannot be read: {reason(exc)}", name))
        return
    if read.torn:
        findings.append(Finding("note", "ledger-torn", f"{name} ends with a torn line (a write was cut off): "
                                "harmless, --resume completes the file from the commit marks", name))
    for index, line in enumerate(read.entries):
        if index > last:
            findings.append(Finding("broken", "ledger-uncommitted",
                                    f"{name} line {index + 1} is an entry for round {index}, which is not committed",
                                    name, index))
        elif index in marks and line != entries.get(index):  # a missing or unreadable mark is reported above
            findings.append(Finding("broken", "ledger-line-differs",
                                    f"{name} line {index + 1} differs from the ledger entry in "
                                    f"{_rel(run, run.mark_path(index))}", name, index))
    unlisted = list(range(len(read.entries), last + 1))
    findings.extend(_unappended(name, "ledger", unlisted, last, held="the entry", resume="completes"))
    if len(findings) == before or all(f.level == "note" for f in findings[before:]):
        findings.append(Finding("ok", "ledger", f"the ledger entries of rounds 0 to {last} chain, match their "
                                "checkpoints and are in " + name + " (signatures: `potluck ledger verify`)", name))


def _note_leftovers(run: RunDirectory, last: int, findings: list[Finding]) -> None:
    for path in run.leftovers(last):
        rel = _rel(run, path)
        if is_temp_file(path.name):
            findings.append(Finding("note", "temp-file",
                                    f"{rel} is a temp file left by a write that was cut off: harmless, "
                                    "--resume removes it", rel))
        else:
            findings.append(Finding("note", "uncommitted-file",
                                    f"{rel} belongs to a round whose commit was cut short: not committed, "
                                    "harmless, --resume removes it", rel))
