"""Crash-safe file writes: a file is either absent or complete under its final name."""

from __future__ import annotations

import os
from pathlib import Path

from potluck.core.errors import RunDirError


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync, rename, fsync of the folder.

    Raises :class:`RunDirError` (disk full, read-only, permissions) and leaves any
    previous file at ``path`` untouched.
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
        tmp.unlink(missing_ok=True)
        raise RunDirError(f"cannot write {path}: {exc.strerror or exc}") from exc


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync; raises :class:`RunDirError` on failure."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise RunDirError(f"cannot append to {path}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
