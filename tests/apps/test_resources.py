"""The node's resource report: cgroup limits, affinity and GPU visibility."""

from __future__ import annotations

import os

import pytest

from potluck.apps.resources import cpus_available, gpus_available, local_resources, memory_available


def test_cpu_quota_caps_the_affinity(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: rounds up to 2
    assert cpus_available(tmp_path) == min(affinity, 2)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus_available(tmp_path) == affinity
    (tmp_path / "cpu.max").write_text("garbage")
    assert cpus_available(tmp_path) == affinity


def test_memory_limit_caps_physical_memory(tmp_path):
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    (tmp_path / "memory.max").write_text("536870912\n")
    assert memory_available(tmp_path) == 512 * 2**20
    (tmp_path / "memory.max").write_text("max\n")
    assert memory_available(tmp_path) == physical
    assert memory_available(tmp_path / "missing") == physical


@pytest.mark.parametrize(
    ("visible", "expected"),
    [("0,1,2", 3), ("", 0), ("-1", 0), ("0,-1,1", 1), ("GPU-8f7c2a,GPU-11aa", 2), (" 3 ", 1)],
)
def test_cuda_visible_devices_decides_when_set(tmp_path, visible, expected):
    (tmp_path / "nvidia0").touch()
    assert gpus_available(tmp_path, {"CUDA_VISIBLE_DEVICES": visible}) == expected


def test_gpus_are_the_nvidia_device_nodes_otherwise(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "null"):
        (tmp_path / name).touch()
    assert gpus_available(tmp_path, {}) == 2
    assert gpus_available(tmp_path / "missing", {}) == 0


def test_this_machine_reports_what_it_has():
    offer = local_resources()
    assert 1 <= offer.cpus <= (os.cpu_count() or 1)
    assert offer.memory_bytes > 2**28
    assert offer.gpus >= 0
