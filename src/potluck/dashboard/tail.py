"""Following ``metrics.jsonl`` as a run appends to it.

The run appends one complete line per committed round (``runtime/rundir.py``); a line
without its newline is still being written and is left for the next read. A poll costs
one ``stat`` when nothing changed. When the file shrinks or is replaced (``--resume``
completes or rewrites it), the tail starts over and says so (``reset``), so a reader
redraws from the records it is handed instead of appending them twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from potluck.core.records import RoundRecord


@dataclass(frozen=True)
class Lines:
    """What one read found: the records of complete lines, in file order; ``problems``
    names each complete line that is not a record (it is skipped, the rest still count)."""

    records: tuple[RoundRecord, ...] = ()
    problems: tuple[str, ...] = ()
    reset: bool = False


def parse_lines(data: bytes, first_line: int = 1, name: str = "metrics.jsonl") -> tuple[Lines, int]:
    """The records in the complete lines of ``data`` and the number of bytes they take.

    ``first_line`` is the line number of ``data``'s first line in the file, for messages.
    """
    end = data.rfind(b"\n") + 1
    records: list[RoundRecord] = []
    problems: list[str] = []
    for number, raw in enumerate(data[:end].split(b"\n")[:-1], start=first_line):
        if not raw.strip():
            continue
        try:
            record = RoundRecord.from_json(_object(json.loads(raw)))
        except (ValueError, TypeError, AttributeError) as exc:  # not JSON, not an object, wrong fields
            problems.append(f"line {number} of {name} is not a round record: {exc}")
            continue
        records.append(record)
    return Lines(tuple(records), tuple(problems)), end


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object")
    return value


@dataclass
class MetricsTail:
    """Reads the lines appended to ``path`` since the last :meth:`poll`.

    ``offset`` is how many bytes of the file have been handed out; a new tail starting at
    an offset taken from an earlier read (the page's first fetch) hands out only what
    came after it.
    """

    path: Path
    offset: int = 0
    lines_read: int = 0
    _inode: int | None = field(default=None, repr=False)

    def poll(self) -> Lines | None:
        """The records appended since the last poll; None when the file did not grow
        (or does not exist yet)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        reset = (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset
        self._inode = st.st_ino
        if reset:
            self.offset, self.lines_read = 0, 0
        if st.st_size == self.offset:
            return Lines(reset=True) if reset else None
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        lines, used = parse_lines(data, self.lines_read + 1, self.path.name)
        self.offset += used
        self.lines_read += data[:used].count(b"\n")
        if not used and not reset:
            return None
        return Lines(lines.records, lines.problems, reset)


def read_all(path: Path) -> tuple[Lines, int]:
    """Every record of the complete lines of ``path`` (none when it does not exist), and
    the offset a :class:`MetricsTail` continues from."""
    tail = MetricsTail(path)
    return tail.poll() or Lines(), tail.offset
