"""reuse_freed_memory keeps a freed model-sized buffer's pages in the process."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts Python processes (the tuning is process-wide)

PROBE = """
import os, sys
from potluck.apps.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "tuned" else False
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
buf = bytearray(64 << 20)
buf[::4096] = b"x" * len(range(0, 64 << 20, 4096))  # touch every page
del buf
print(applied, (rss() - before) >> 20)
"""


def retained_mib(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, mib = out.split()
    return applied == "True", int(mib)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the tuning applies to glibc's malloc only")
def test_freed_buffers_stay_mapped_only_when_tuned():
    applied, tuned = retained_mib("tuned")
    _, default = retained_mib("default")
    assert applied
    assert tuned >= 60  # the 64 MiB buffer's pages are kept for the next round
    assert default < 8  # glibc's default unmaps a buffer this large when it is freed
