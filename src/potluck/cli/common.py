"""What every command shares: one-line failures and KEY=VALUE options.

Exit codes: 0 done; 1 a run or command failed (:data:`EXIT_FAILED`); 2 bad settings
or usage (:data:`EXIT_USAGE`): an unknown option, a value of the wrong type, a rule a
setting breaks, an unknown task, a data path that does not exist; 130 interrupted.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from potluck.core.errors import ConfigError, PotluckError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

# click's usage and base errors, whether typer vendors click (0.2x) or depends on it:
# typer.BadParameter derives from UsageError, which derives from ClickException.
_USAGE_ERROR: type[Exception] = typer.BadParameter.__mro__[1]
_CLICK_ERROR: type[Exception] = typer.BadParameter.__mro__[2]


class OneLineErrors(TyperGroup):
    """The root command group: a parser error (unknown option, a value of the wrong
    type) is one line ``potluck: error: …`` and exit code 2, like every other error,
    instead of click's boxed usage text."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `potluck ledger` alone: its help, as before
                return super().main(args, prog_name, complete_var, standalone_mode=True, **extra)
            _usage_error(exc)
        except typer.Abort:
            typer.echo("potluck: interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc: Exception) -> NoReturn:
    message = " ".join(str(getattr(exc, "format_message", exc.__str__)()).split())  # one line, however wrapped
    context = getattr(exc, "ctx", None)
    path = getattr(context, "command_path", "")
    hint = f" (see `{path} --help`)" if isinstance(exc, _USAGE_ERROR) and path else ""
    typer.echo(f"potluck: error: {message}{hint}", err=True)
    sys.exit(int(getattr(exc, "exit_code", EXIT_USAGE)))


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
        raise typer.Exit(EXIT_INTERRUPTED) from None


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
