"""A test that starts potluck processes must be marked ``slow``.

Loaded as a pytest plugin by tests/conftest.py. While a test runs (its function-scoped
fixtures included) this watches what it starts:

- ``subprocess`` calls, seen through the interpreter's ``subprocess.Popen`` audit event
  with their command line, and ``os.fork`` / ``os.posix_spawn`` / ``os.spawn*``;
- any other child process, such as a process pool's ``spawn`` workers (which do not go
  through ``subprocess``): the children's resource usage grows (``getrusage``) or a new
  child is alive at the end (``/proc/<pid>/task/*/children``).

A test without the mark fails when it ran potluck in another process (``-m potluck…``,
``-c`` code naming it, the ``potluck`` script, a ``benchmarks/`` script) or started children no ``subprocess``
call explains. Short-lived external checkers (ruff, mypy, openssl, systemd-analyze,
kubectl, mount) are not potluck and may run in the fast subset. Children that were
already alive when the test began (left by an earlier test) make the child count
ambiguous, so that part of the check is skipped for such a test; processes started by
module- or session-scoped fixtures are not attributed to any one test.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SPAWN_EVENTS = ("os.fork", "os.forkpty", "os.posix_spawn", "os.spawn")


@dataclass
class Seen:
    """What one test started: each subprocess's command line, and bare forks/spawns."""

    commands: list[list[str]] = field(default_factory=list)
    forks: int = 0


_current: Seen | None = None


def _audit(event: str, args: tuple) -> None:
    seen = _current
    if seen is None:
        return
    if event == "subprocess.Popen":
        argv = args[1]
        seen.commands.append([os.fsdecode(a) for a in ([argv] if isinstance(argv, (str, bytes)) else argv)])
    elif event in SPAWN_EVENTS:
        seen.forks += 1


def runs_potluck(argv: Sequence[str]) -> bool:
    """Whether a command line runs potluck: ``python -m potluck…``, ``python -c`` code
    that names it, the ``potluck`` script, or a script of ``benchmarks/`` (which import
    potluck)."""
    words = list(argv)
    if not words:
        return False
    if Path(words[0]).name == "potluck":
        return True
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1].split(".")[0] == "potluck":
            return True
        if word == "-c" and "potluck" in words[i + 1]:  # a probe that imports it
            return True
    return any(word.endswith(".py") and "benchmarks" in Path(word).parts for word in words)


def verdict(seen: Seen, children_before: set[int], children_after: set[int], child_faults: int) -> str | None:
    """Why a test without the ``slow`` mark may not do what it did, or None."""
    potluck = [argv for argv in seen.commands if runs_potluck(argv)]
    if potluck:
        command = " ".join(potluck[0]).replace("\n", " ")
        return f"it runs potluck in another process: {command[:160]}"
    if seen.forks:
        return f"it forked or spawned {seen.forks} process(es) directly"
    if seen.commands or children_before:
        return None  # children are explained by its subprocess calls, or not attributable
    new = children_after - children_before
    if new or child_faults:
        return f"it started child processes outside subprocess (worker processes?){': ' if new else ''}" + \
            ", ".join(str(p) for p in sorted(new))
    return None


def children() -> set[int]:
    """This process's live (or unreaped) children, from every thread."""
    found: set[int] = set()
    for path in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        try:
            found.update(int(pid) for pid in path.read_text().split())
        except (OSError, ValueError):
            pass
    return found


def _child_faults() -> int:
    # Every child that ran and was reaped adds page faults to this figure, however short it was.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_minflt + usage.ru_majflt


_hooked = False


@pytest.fixture(autouse=True)
def _slow_if_it_starts_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    global _current, _hooked
    if request.node.get_closest_marker("slow") is not None:
        yield
        return
    if not _hooked:
        sys.addaudithook(_audit)  # hooks cannot be removed; it does nothing between tests
        _hooked = True
    seen, before, faults = Seen(), children(), _child_faults()
    _current = seen
    try:
        yield
    finally:
        _current = None
    why = verdict(seen, before, children(), _child_faults() - faults)
    if why:
        pytest.fail(f"{request.node.nodeid} starts processes but is not marked slow: {why}", pytrace=False)
