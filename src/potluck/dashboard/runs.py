"""Which run directories the dashboard shows, and what each one's summary says.

Each path given to ``potluck dashboard`` is either a run directory (it holds
``config.toml``, ``metrics.jsonl``, ``ledger.jsonl`` or ``checkpoints/``; or it does not
exist yet: a run about to start there) or a folder of run directories such as ``runs/``,
rescanned on every listing so new runs appear. A run's id in URLs is its folder's name,
with a short digest of its path when two folders share a name; nothing outside the
listed folders can be named.

A run's status is read from its files, since a run directory does not record which
process owns it: ``finished`` once the final model is written after the last record;
``running`` while its files changed within the last minute or three of its longest recent
rounds; ``stopped`` after that (killed or waiting: ``--resume`` continues it);
``waiting`` before anything is written.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from potluck.core.errors import UnknownId
from potluck.core.files import reason
from potluck.core.layout import RunLayout
from potluck.core.records import RoundRecord, best_record
from potluck.dashboard.tail import Lines, read_all

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

LIVE_MIN_SECONDS = 60.0
_MARKERS = ("config.toml", "metrics.jsonl", "ledger.jsonl", "checkpoints")


def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in _MARKERS)


class RunCatalog:
    """The run directories under the paths given, by id, and their records (re-read only
    when ``metrics.jsonl`` changed)."""

    def __init__(self, sources: Sequence[Path], folders: Sequence[Path] = ()) -> None:
        """``folders`` are folders of runs even while they do not exist (the default ``runs``)."""
        self.sources = [Path(s) for s in sources]
        self.folders = [Path(f) for f in folders]
        self._cache: dict[Path, tuple[tuple[int, int, int], Lines, int]] = {}

    def runs(self) -> dict[str, Path]:
        """Id → run directory, ordered by path."""
        found: list[Path] = []
        for source in self.sources:
            if not source.exists() or is_run_dir(source):
                found.append(source)
            elif source.is_dir():
                found.extend(_runs_in(source))
        for folder in self.folders:
            found.extend(_runs_in(folder))
        unique = sorted({p.resolve(): p for p in found}.items())
        names = [p.name or str(resolved) for resolved, p in unique]
        out: dict[str, Path] = {}
        for (resolved, path), name in zip(unique, names):
            run_id = name if names.count(name) == 1 else f"{name}~{hashlib.sha256(str(resolved).encode()).hexdigest()[:6]}"
            out[run_id] = path
        return out

    def find(self, run_id: str) -> Path:
        """The run directory of ``run_id``; :class:`UnknownId` when no listed run has it."""
        path = self.runs().get(run_id)
        if path is None:
            raise UnknownId(f"no run {run_id!r} among the run directories shown")
        return path

    def records(self, path: Path) -> tuple[Lines, int]:
        """The records of ``path``'s ``metrics.jsonl`` and the byte offset they end at."""
        file = RunLayout(path).metrics_file
        try:
            st = os.stat(file)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return Lines(), 0
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1], cached[2]
        lines, offset = read_all(file)
        self._cache[path] = (key, lines, offset)
        return lines, offset


def _runs_in(folder: Path) -> list[Path]:
    try:
        return [p for p in sorted(folder.iterdir()) if p.is_dir() and is_run_dir(p)]
    except OSError:  # not there (yet), or not readable: no runs
        return []


def read_config(path: Path) -> tuple[dict[str, Any], str | None]:
    """The run's ``config.toml`` and, when it cannot be read, why ({} then)."""
    file = RunLayout(path).config_file
    try:
        return tomllib.loads(file.read_text(encoding="utf-8")), None
    except FileNotFoundError:
        return {}, None
    except OSError as exc:
        return {}, f"cannot read {file}: {reason(exc)}"
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return {}, f"{file} is not valid TOML: {exc}"


@dataclass(frozen=True)
class Status:
    state: str  # waiting | running | stopped | finished
    updated: float | None  # when its files last changed (seconds since the epoch)


def run_status(path: Path, records: Sequence[RoundRecord], now: float | None = None) -> Status:
    """Where the run in ``path`` stands, read from its files' times (module docstring)."""
    layout = RunLayout(path)
    times = {name: _mtime(p) for name, p in (("config", layout.config_file), ("metrics", layout.metrics_file),
                                             ("ledger", layout.ledger_file), ("checkpoints", layout.checkpoints),
                                             ("model", layout.model_file))}
    written = [t for t in times.values() if t is not None]
    if not written:
        return Status("waiting", None)
    updated = max(written)
    model, metrics = times["model"], times["metrics"]
    if model is not None and model >= (metrics or 0.0):
        return Status("finished", updated)
    recent = [r.seconds for r in records[-5:] if not math.isnan(r.seconds)]
    window = max(LIVE_MIN_SECONDS, 3 * max(recent, default=0.0))
    now = time.time() if now is None else now
    return Status("running" if now - updated <= window else "stopped", updated)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def summary(run_id: str, path: Path, catalog: RunCatalog, now: float | None = None) -> dict[str, Any]:
    """What the runs list shows of one run: status, task, strategy, rounds, best metric."""
    lines, _ = catalog.records(path)
    records = lines.records
    config, config_problem = read_config(path)
    status = run_status(path, records, now)
    best = best_record(records)
    last = records[-1] if records else None
    metric = last.metric if last else None
    return {
        "id": run_id, "path": str(path), "status": status.state, "updated": status.updated,
        "task": config.get("task"), "strategy": config.get("strategy"),
        "rounds": last.round if last else 0, "planned": config.get("rounds"),
        "metric": metric, "higher_is_better": last.higher_is_better if last else None,
        "best": None if best is None else {"round": best.round, "value": best.primary},
        "latest": None if last is None or math.isnan(last.primary) else last.primary,
        "problems": [p for p in (config_problem, *lines.problems) if p],
    }


def privacy_budget(config: dict[str, Any]) -> dict[str, Any] | None:
    """The ε budget and δ when the run applies differential privacy with a budget."""
    dp = config.get("dp", "none")
    budget = config.get("dp_epsilon_budget") or 0.0
    if dp in (None, "none") or not budget:
        return None
    return {"mechanism": dp, "epsilon_budget": float(budget), "delta": config.get("dp_delta")}
