"""What a log line is about: the run, the round and the node, where known.

The round loop and the node loop say which round they are in with
:func:`log_fields` (or :func:`bind_log_fields` inside such a block); an app says which run and node its whole process serves with
:func:`set_process_log_fields`. :func:`current_log_fields` merges the two (the
innermost ``log_fields`` wins) for a log formatter to add to every line
(``observability/logs.py``). Nothing here formats or prints.

``log_fields`` uses a context variable, so it covers the thread (or task) that set
it; threads a library starts (gRPC's handler pool) see only the process fields.
A process field may be a zero-argument callable, read when a line is written (the
server gives ``round`` as ``lambda: pool.current_round``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

FIELDS = ("run_id", "round", "node_id")

_scoped: ContextVar[dict[str, Any]] = ContextVar("potluck_log_fields")
_process: dict[str, Any] = {}
_lock = threading.Lock()


@contextmanager
def log_fields(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written in this thread inside the block."""
    token = _scoped.set({**_scoped.get({}), **fields})
    try:
        yield
    finally:
        _scoped.reset(token)


def bind_log_fields(**fields: Any) -> None:
    """Add ``fields`` to every later line of this thread, up to the end of the
    enclosing :func:`log_fields` block (which undoes this too)."""
    _scoped.set({**_scoped.get({}), **fields})


def set_process_log_fields(**fields: Any) -> None:
    """Fields for every line of this process; ``None`` removes one."""
    with _lock:
        for name, value in fields.items():
            if value is None:
                _process.pop(name, None)
            else:
                _process[name] = value


def current_log_fields() -> dict[str, Any]:
    """The fields known here and now, without the unknown (``None``) ones."""
    with _lock:
        process = dict(_process)
    merged: dict[str, Any] = {}
    for name, value in process.items():
        if callable(value):
            try:
                value = value()
            except Exception:  # a log line must never fail because a field could not be read
                value = None
        merged[name] = value
    merged.update(_scoped.get({}))
    return {k: v for k, v in merged.items() if v is not None}
