"""Reading and writing TLS files: private directories, atomic writes, errors that name the file.

A failure of the file system is a :class:`CertificateError` naming the path and the
reason (not an ``OSError`` with a traceback): the person fixes permissions or disk
space, then runs the ``potluck certs`` command again.
"""

from __future__ import annotations

import os
from pathlib import Path

from potluck.core.errors import PotluckError


class CertificateError(PotluckError):
    """TLS material is missing, unreadable, would be overwritten, or does not verify.

    The message names the file or certificate (by subject) and, where one exists, the
    ``potluck certs`` command that fixes it. Invalid arguments (a bad node id or host,
    days < 1) raise :class:`~potluck.core.errors.ConfigError` instead.
    """


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:  # unreadable (permissions), a directory, or gone since it was checked
        raise CertificateError(f"cannot read {path}: {exc.strerror or exc}") from exc


def make_private_dir(path: Path) -> None:
    """``path`` and its parents, made 0700 where they are new."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise CertificateError(f"cannot create the TLS directory {path}: {exc.strerror or exc}") from exc


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp file, fsync, rename); the temp file is created with ``mode``,
    so a key is never readable by others, even briefly."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise CertificateError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CertificateError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
