"""What every command shares: one-line failures and KEY=VALUE options."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

from potluck.core.errors import ConfigError, PotluckError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_FAILED = 1
EXIT_USAGE = 2


@contextmanager
def failures_as_exit_codes(err: Callable[[str], None]) -> Iterator[None]:
    """Turn potluck's own errors into a one-line reason and a non-zero exit code."""
    try:
        yield
    except ConfigError as exc:
        err(f"potluck: error: {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    except PotluckError as exc:
        err(f"potluck: error: {exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except OSError as exc:  # a disk or system failure no layer wrapped: still one line, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        err(f"potluck: error: {where}{exc.strerror or exc}")
        raise typer.Exit(EXIT_FAILED) from None
    except KeyboardInterrupt:
        err("potluck: interrupted")
        raise typer.Exit(130) from None


def parse_assignments(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["lr=0.1", "optimizer=adam"]`` → ``{"lr": 0.1, "optimizer": "adam"}``.

    Values are read as TOML (numbers, booleans, quoted strings); anything that is not
    valid TOML is kept as a plain string.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key.strip()] = value
    return out
