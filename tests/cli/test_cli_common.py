"""Failures every command shares: one line and an exit code, never a traceback."""

from __future__ import annotations

import errno

import pytest
import typer

from potluck.cli.common import failures_as_exit_codes
from potluck.core.errors import ConfigError, RunDirError


@pytest.mark.parametrize(("error", "code", "line"), [
    (ConfigError("rounds must be ≥ 1"), 2, "potluck: error: rounds must be ≥ 1"),
    (RunDirError("cannot write runs/a/model.safetensors: no space left on device"), 1,
     "potluck: error: cannot write runs/a/model.safetensors: no space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "runs/a/run-id"), 1,
     "potluck: error: runs/a/run-id: Read-only file system"),
])
def test_errors_become_one_line_and_an_exit_code(error, code, line):
    lines: list[str] = []
    with pytest.raises(typer.Exit) as exit_:
        with failures_as_exit_codes(lines.append):
            raise error
    assert exit_.value.exit_code == code
    assert lines == [line]


def test_programming_errors_are_not_hidden():
    with pytest.raises(ZeroDivisionError):
        with failures_as_exit_codes(lambda line: None):
            raise ZeroDivisionError
