"""Keep freed memory for reuse instead of handing it back to the kernel.

Every round allocates the same few model-sized buffers (an encoding, a reassembled
payload per node). glibc maps each buffer above 32 MiB afresh and unmaps it when freed,
so every round pays a page fault per 4 KiB touched: on a VM that costs four to five
times the copy that fills the buffer (``benchmarks/deployment.py`` shows the effect).
Serving from the heap and never trimming it keeps those pages warm; the process's RSS
stays at its peak, which for a long-running server or node is the figure that counts.
One arena for every thread: payloads are received on one thread and freed on another
(the bulk lane's connection threads, gRPC's pool), and per-thread arenas would each
keep, and fault in, their own model-sized buffers.
"""

from __future__ import annotations

import ctypes
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def reuse_freed_memory() -> bool:
    """Tune glibc's malloc for this process; False where it is not glibc (musl, macOS)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return (bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))  # a C int
            and bool(libc.mallopt(_M_ARENA_MAX, 1)))
