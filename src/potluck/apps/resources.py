"""What a node can offer, as it reports at join: CPUs, memory and GPUs it may use.

Containers and Slurm jobs see the host's totals through ``os.cpu_count()`` and
``/proc/meminfo``; the limits that matter are the cgroup's and the CPU affinity, so
those win when set. GPUs are counted without initialising CUDA (which takes seconds
and memory): ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA device nodes.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")
_NVIDIA = re.compile(r"^nvidia\d+$")


@dataclass(frozen=True)
class Resources:
    cpus: int
    memory_bytes: int
    gpus: int


def cpus_available(cgroup: Path = _CGROUP) -> int:
    """CPUs this process may run on, capped by a cgroup v2 quota (``cpu.max``)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit readable: the affinity is the limit
    return count


def memory_available(cgroup: Path = _CGROUP) -> int:
    """Physical memory, capped by a cgroup v2 limit (``memory.max``)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            total = min(total, int(limit))
    except (OSError, ValueError):
        pass
    return total


def gpus_available(devices: Path = Path("/dev"), environ: dict[str, str] | None = None) -> int:
    """GPUs visible to CUDA: ``CUDA_VISIBLE_DEVICES`` if set (empty or -1 hides all), else
    the ``/dev/nvidiaN`` device nodes (0 on a machine without NVIDIA's driver)."""
    env = os.environ if environ is None else environ
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return 0 if not ids or ids[0] == "-1" else len(ids[: ids.index("-1")] if "-1" in ids else ids)
    try:
        return sum(1 for entry in devices.iterdir() if _NVIDIA.match(entry.name))
    except OSError:
        return 0


def local_resources() -> Resources:
    return Resources(cpus_available(), memory_available(), gpus_available())
