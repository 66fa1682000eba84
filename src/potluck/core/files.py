"""Crash-safe file writes: a file is either absent or complete under its final name.

:func:`atomic_write` writes a temp file beside the target (``.NAME.tmp-PID``), fsyncs
it, renames it over the target and fsyncs the folder, so the new name survives a power
cut too. A process killed part-way leaves at most such a temp file, which
:func:`is_temp_file` recognises so that resume can remove it and ``potluck check`` can
call it harmless.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from potluck.core.errors import RunDirError

_TEMP = re.compile(r"^\..+\.tmp-\d+$")

# The failures people meet on a real disk, in the words they would search for.
_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error (a failing disk?)",
}


def is_temp_file(name: str) -> bool:
    """Whether ``name`` is the temp file of an :func:`atomic_write` (never a final name)."""
    return bool(_TEMP.match(name))


def reason(exc: OSError) -> str:
    """A short lower-case reason for an OS error: "no space left on device", …"""
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, rename, fsync of the folder.

    Raises :class:`RunDirError` naming ``path`` and the reason (disk full, read-only,
    permissions); any previous file at ``path`` is left untouched and the temp file is
    removed when the file system still allows it.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):  # on a read-only file system even unlink fails
            tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {reason(exc)}") from exc


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync; raises :class:`RunDirError` on failure.

    Not atomic: a process killed mid-append can leave a torn last line, so callers keep
    another copy of what they append (the run directory keeps it in the commit marks).
    """
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise RunDirError(f"cannot append to {path}: {reason(exc)}") from exc


def remove(path: Path) -> None:
    """Remove a file if present; raises :class:`RunDirError` when it cannot be removed."""
    if not path.exists():
        return  # unlink would fail on a read-only file system even for a missing file
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot remove {path}: {reason(exc)}") from exc


def fsync_dir(path: Path) -> None:
    """Make renames and removals inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
