"""Host memory: make freed tensors leave the process, so that its resident memory follows the budget.

glibc's malloc serves blocks of 128 KiB or more with mmap, but raises that threshold to the size of
each such block freed (up to 32 MiB), after which blocks of that size come from its heap, which keeps
them when they are freed. A tiled scale frees and allocates tile-sized activations (several MiB each)
again and again, in shapes that change from tile to tile, and the heap keeps and fragments them:
bench/tiled.py (a 1600×1200 job at its own size, 2 iterations a scale, 1 GiB budget, 2-core CPU;
docs/benchmarks.md) measured the process's peak resident memory +1825 MiB with glibc's default against
+692 MiB with the threshold fixed at 1 MiB (--fixed-mmap). tests/test_tiling.py checks the peak of a
tiled job against its budget with nothing set outside the process.

A fixed threshold is not free: every large block is mapped afresh, and its pages fault and are zeroed
again on first touch. A whole 256×192 job (fp32, 8 iterations, 3 runs each way alternating, 2-core Xeon
with other jobs running) took 8× the page faults (108k against 8–12k an iteration); with one thread
0.74–0.86 s an iteration against 0.63–0.67 s (+20–28 %, 1.6 s of system time in the job against
0.1–0.2 s); with two threads, whose timing the other load blurred, 5–10 % more CPU time. So the engine
fixes the threshold only when a job on the CPU runs a scale in tiles (Engine.stylize), and from then on
for the whole process: glibc cannot go back to its moving threshold.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20

_fixed = False


def fix_malloc_mmap_threshold() -> bool:
    """Fixes glibc's mmap threshold at 1 MiB (what MALLOC_MMAP_THRESHOLD_=1048576 does) and returns
    what the heap keeps free to the system; True once in force. Does nothing, and returns False, off
    Linux, with another C library, where MALLOC_MMAP_THRESHOLD_ is set (the user's choice stands) or
    where the call fails; never raises."""
    global _fixed
    if _fixed:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: their own allocators
            return False
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
        if libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
            return False
        libc.malloc_trim(0)  # what earlier jobs left in the heap would count against this one's budget
    except (OSError, AttributeError):
        return False
    _fixed = True
    return True
