"""Log lines for people (``text``, the default) or for machines (``json``).

``json`` writes one object per line::

    {"time": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "potluck.backends.fleet",
     "message": "node node-000 joined: ...", "run_id": "5f0c...", "round": 3, "node_id": "node-000"}

``time`` is UTC (ISO 8601, milliseconds); ``run_id``, ``round`` and ``node_id`` appear
whenever they are known (see :mod:`potluck.runtime.logcontext`), as do any ``extra=``
fields a caller passed; an exception adds ``exception`` (the formatted traceback).
The ``text`` format is the one potluck always had:
``2025-01-31 12:00:00,123 INFO potluck.backends.fleet: message``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from typing import Any, TextIO

from potluck.core.config import LOG_FORMATS
from potluck.core.records import RoundRecord
from potluck.runtime.logcontext import FIELDS, current_log_fields

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", *FIELDS}


class ContextFilter(logging.Filter):
    """Puts ``run_id``, ``round`` and ``node_id`` on each record where known (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_log_fields().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for name, value in vars(record).items():
            if name not in _STANDARD and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(_finite(out), default=str, ensure_ascii=False)


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def make_handler(log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` lines with the context fields."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    return handler


def configure_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Set up this process's logging, like :func:`logging.basicConfig`: it does nothing
    when the root logger already has handlers (an embedding program, or pytest).

    With ``json``, Python warnings are logged too (not printed raw), and an uncaught
    exception is logged as one line before the process ends.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    if log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
    logging.getLogger("potluck").critical("uncaught %s: %s", kind.__name__, exc, exc_info=(kind, exc, tb))


class RoundLog:
    """A RoundHook that logs each committed round (for runs without a progress bar): the
    primary metric and loss in the message; ``metric``, every held-out figure under
    ``metrics``, ``loss`` and the node counts as fields of a JSON line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("potluck.rounds")

    def on_commit(self, record: RoundRecord, params: Any, strategy: Any) -> None:
        primary = "" if record.metric == "loss" else f"{record.metric} {record.primary:.4f}, "
        self.log.info(
            "round %d committed: %sloss %.4f, %d of %d nodes, %.2f s",
            record.round, primary, record.loss, record.num_nodes, record.sampled, record.seconds,
            extra={"round": record.round, "metric": record.metric, "metrics": dict(record.metrics),
                   "loss": record.loss, "nodes": record.num_nodes, "sampled": record.sampled,
                   "seconds": record.seconds},
        )
