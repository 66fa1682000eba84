"""Helpers shared by the benchmark scripts: timing a command and its process tree's RSS."""

from __future__ import annotations

import statistics
import subprocess
import time
from dataclasses import dataclass

import psutil


@dataclass
class CommandRun:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], poll: float = 0.02, timeout: float = 600) -> CommandRun:
    """Run ``cmd``; wall time from start to exit and the peak summed RSS of its process tree."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        if time.perf_counter() - started > timeout:
            proc.kill()
            break
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass  # a process ended between listing and reading
        time.sleep(poll)
    out, err = proc.communicate()
    return CommandRun(time.perf_counter() - started, peak / 2**20, proc.returncode, out, err)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)
