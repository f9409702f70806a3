"""What a run process may use, and how it allocates.

- :func:`tune_allocator`: glibc's malloc returns every block above 128 KB to
  the kernel when it is freed (mmap/munmap, then page faults on the next
  use). A torch training loop frees and reallocates the same multi-MB
  temporaries every iteration, so at ICNN-JKO's sizes a third of an
  iteration was spent faulting pages in (tests/benchmarks/bench_icnn_jko.py
  measures it). Run processes keep freed memory for reuse instead.
- :func:`limit_memory`: an address-space cap for the run process (and what
  it forks), so that a runaway solver gets a MemoryError, not the host's
  OOM killer.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource

#: mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30,
                   top_pad: int = 64 << 20) -> bool:
    """Keep freed heap memory for reuse (glibc only; a no-op elsewhere). True if applied.

    Blocks up to ``mmap_threshold`` come from the heap instead of fresh
    mappings, the heap top is returned to the kernel only beyond
    ``trim_threshold``, and it grows ``top_pad`` bytes at a time.
    """
    name = ctypes.util.find_library("c")
    if not name or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = [mallopt(M_MMAP_THRESHOLD, mmap_threshold), mallopt(M_TRIM_THRESHOLD, trim_threshold),
          mallopt(M_TOP_PAD, top_pad)]
    return all(ok)


def reset_allocator() -> bool:
    """glibc's defaults again (for side-by-side benchmarks)."""
    return tune_allocator(128 << 10, 128 << 10, 0)


def limit_memory(max_bytes: int | None) -> None:
    """Cap this process's address space (RLIMIT_AS) at ``max_bytes`` (None: no cap)."""
    if not max_bytes:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
