"""Where a run directory keeps each file, and how a commit mark is read back.

The commit protocol (``runtime/rundir.py``), resume (``runtime/resume.py``), the ledger
audit (``ledger/audit.py``) and ``potluck check`` all read the same layout; it is
declared here once::

    config.toml                          the resolved settings
    metrics.jsonl                        one record per committed round
    ledger.jsonl                         the provenance ledger: entry k per committed round k
    model.safetensors                    the final model
    checkpoints/round-NNNN.safetensors   model after round N
    checkpoints/round-NNNN.strategy.safetensors
    checkpoints/round-NNNN.json          the commit mark: record, both digests, ledger entry

A run with ``keep_checkpoints = N`` (``--keep-checkpoints``) removes the model and
strategy files of a round once N later rounds are committed, unless it is round 0 or a
multiple of ``keep_every``; its commit mark stays. :meth:`RunLayout.pruned` says which
files a run may lack, so resume, ``potluck check`` and the ledger audit accept it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from potluck.core.errors import RunDirError
from potluck.core.files import is_temp_file, reason

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

LEDGER_FILE_NAME = "ledger.jsonl"
MARK_KEYS = ("record", "model_sha256", "strategy_sha256")
_MARK = re.compile(r"^round-(\d{4,})\.json$")
_ROUND_FILE = re.compile(r"^round-(\d{4,})\.")


def checkpoint_kept(rnd: int, last: int, keep: int, every: int) -> bool:
    """Whether round ``rnd``'s model and strategy files stay once round ``last`` is
    committed: always with ``keep`` 0; else round 0, the last ``keep`` rounds and every
    ``every``-th round (``every`` 0: none)."""
    return keep <= 0 or rnd == 0 or rnd > last - keep or (every > 0 and rnd % every == 0)


class RunLayout:
    """The paths of one run directory, and reading its commit marks; writes nothing."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"

    def model_path(self, rnd: int) -> Path:
        return self.checkpoints / f"round-{rnd:04d}.safetensors"

    def strategy_path(self, rnd: int) -> Path:
        return self.checkpoints / f"round-{rnd:04d}.strategy.safetensors"

    def mark_path(self, rnd: int) -> Path:
        return self.checkpoints / f"round-{rnd:04d}.json"

    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def model_file(self) -> Path:
        return self.path / "model.safetensors"

    @property
    def ledger_file(self) -> Path:
        return self.path / LEDGER_FILE_NAME

    def keeps(self) -> tuple[int, int]:
        """``(keep_checkpoints, keep_every)`` from ``config.toml``; ``(0, 0)`` (keep all)
        when it does not say or cannot be read."""
        try:
            config = tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0, 0
        keep, every = config.get("keep_checkpoints", 0), config.get("keep_every", 0)
        return (keep, every) if isinstance(keep, int) and isinstance(every, int) else (0, 0)

    def pruned(self, rnd: int, last: int) -> bool:
        """True when ``--keep-checkpoints`` removes round ``rnd``'s files once ``last`` is committed."""
        keep, every = self.keeps()
        return not checkpoint_kept(rnd, last, keep, every)

    def committed_rounds(self) -> list[int]:
        """Rounds that have a commit mark, ascending (contiguity is not checked here)."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(int(m.group(1)) for f in self.checkpoints.iterdir() if (m := _MARK.match(f.name)))

    def read_mark(self, rnd: int) -> dict[str, Any]:
        """The commit mark of round ``rnd``; :class:`RunDirError` if unreadable or malformed."""
        path = self.mark_path(rnd)
        try:
            mark = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise RunDirError(f"cannot read {path}: {reason(exc)}") from exc
        except ValueError as exc:
            raise RunDirError(f"{path} is not a valid commit mark: {exc}") from exc
        if not isinstance(mark, dict) or any(k not in mark for k in MARK_KEYS) or not isinstance(mark["record"], dict):
            raise RunDirError(f"{path} is not a valid commit mark: it needs {', '.join(MARK_KEYS)}")
        if mark["record"].get("round") != rnd:
            raise RunDirError(f"{path} is not a valid commit mark: its record is for round {mark['record'].get('round')}")
        return mark

    def leftovers(self, last: int) -> list[Path]:
        """Files no committed round owns: temp files, and files of rounds after ``last``."""
        found: list[Path] = []
        for folder in (self.path, self.checkpoints):
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                m = _ROUND_FILE.match(f.name) if folder == self.checkpoints else None
                if is_temp_file(f.name) or (m is not None and int(m.group(1)) > last):
                    found.append(f)
        return found
