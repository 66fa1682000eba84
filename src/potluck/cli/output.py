"""A command's own lines (``listening on …``, ``error: …``) in the chosen log format.

With ``--log-format text`` (the default) they are printed as they always were; with
``json`` they become log records, so every line the process writes to stderr is one
JSON object (see ``observability/logs.py``).
"""

from __future__ import annotations

import logging

import typer

from potluck.core.config import LOG_FORMATS
from potluck.core.errors import ConfigError
from potluck.core.records import RoundRecord, best_record
from potluck.observability.logs import configure_logging


class CommandOutput:
    """Plain lines until :meth:`configure` switches to JSON logs."""

    def __init__(self, logger: str) -> None:
        self.logger_name = logger
        self.log: logging.Logger | None = None

    def configure(self, log_format: str) -> None:
        """Set up the process's logging (``text`` or ``json``)."""
        if log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
        configure_logging(log_format)
        self.log = logging.getLogger(self.logger_name) if log_format == "json" else None

    @property
    def json(self) -> bool:
        return self.log is not None

    def info(self, line: str) -> None:
        self._say(logging.INFO, line)

    def warning(self, line: str) -> None:
        self._say(logging.WARNING, line)

    def error(self, line: str) -> None:
        self._say(logging.ERROR, line)

    def result(self, line: str) -> None:
        """The command's result: stdout in text mode, a log line in JSON mode."""
        if self.log is not None:
            self.log.info(line)
        else:
            typer.echo(line)

    def _say(self, level: int, line: str) -> None:
        if self.log is not None:
            self.log.log(level, line)
        else:
            typer.echo(line, err=True)


def metrics_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"


def round_figures(record: RoundRecord, sep: str = "  ") -> str:
    """A round's held-out primary metric and loss, e.g. ``perplexity 12.3456  loss 2.5126``
    (only the loss when the task ranks by loss)."""
    loss = f"loss {record.loss:.4f}"
    return loss if record.metric == "loss" else f"{record.metric} {record.primary:.4f}{sep}{loss}"


def best_text(records: list[RoundRecord]) -> str:
    """The best held-out primary metric of ``records`` in its direction, e.g.
    ``11.2345 in round 7 (lower is better)``; empty when no round has a number."""
    best = best_record(records)
    if best is None:
        return ""
    return f"{best.primary:.4f} in round {best.round} ({'higher' if best.higher_is_better else 'lower'} is better)"
