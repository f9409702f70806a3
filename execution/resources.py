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
- :func:`run_processes` / :func:`kill_run`: every process a run started,
  found by descent (the run process is a child subreaper) and not only by
  process group, measured together and killed together.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from functools import lru_cache

#: mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30,
                   top_pad: int = 64 << 20) -> bool:
    """Keep freed heap memory for reuse (glibc only; a no-op elsewhere). True if applied.

    Blocks up to ``mmap_threshold`` come from the heap instead of fresh
    mappings, the heap top is returned to the kernel only beyond
    ``trim_threshold``, and it grows ``top_pad`` bytes at a time.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
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


# --- the machine -------------------------------------------------------------------------------
def _meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes (Linux), or None."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def total_memory_bytes() -> int:
    """Physical memory of the machine (/proc/meminfo; a sysconf fallback)."""
    return _meminfo("MemTotal") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory_bytes() -> int:
    """Memory the kernel can give without swapping (MemAvailable), or the total."""
    return _meminfo("MemAvailable") or total_memory_bytes()


#: the smallest memory a run process needs (Python, numpy, torch loaded): the -j cap's unit
RUN_FLOOR_BYTES = 1 << 30
#: the share of the machine's memory all concurrent runs may use together by default
MEMORY_SHARE = 0.8


def default_max_memory(n_jobs: int) -> int:
    """Per-run memory limit: 80 % of the machine's memory split over the concurrent runs."""
    return max(RUN_FLOOR_BYTES, int(MEMORY_SHARE * total_memory_bytes() / max(1, n_jobs)))


def cap_jobs(requested: int, n_runs: int, max_memory: int | None = None) -> tuple[int, str]:
    """Parallel runs actually used, and why fewer than ``requested`` ('' if not).

    The rule: at most the number of runs to do, the number of cores, and as
    many runs as the available memory holds at ``max_memory`` (or at the 1 GB
    a run needs at least) each.
    """
    cores = os.cpu_count() or 1
    per_run = max(RUN_FLOOR_BYTES, max_memory or 0)
    by_memory = max(1, available_memory_bytes() // per_run)
    used = max(1, min(requested, max(1, n_runs), cores, by_memory))
    if used >= requested:
        return requested, ""
    limits = {f"{n_runs} run{'s' if n_runs != 1 else ''} to do": max(1, n_runs),
              f"{cores} cores": cores,
              f"{available_memory_bytes() / 2**30:.0f} GB available at "
              f"{per_run / 2**30:.1f} GB a run": by_memory}
    binding = ", ".join(name for name, value in limits.items() if value == used)
    return used, f"-j {requested} reduced to {used} ({binding})"


# --- process trees ----------------------------------------------------------------------------
# A run is every process it started, not only its process group: a solver's child may leave
# the group (setsid, start_new_session=True) or be orphaned by an intermediate that exits
# (a daemon's double fork). Run processes are child subreapers, so such orphans stay their
# descendants; a supervisor also remembers every process it saw (pid and start time), which
# finds the ones a run process that already ended left behind.

def process_table() -> dict[int, tuple[int, int, str]]:
    """Live processes (zombies left out): pid -> (parent pid, process group, start time).

    Read from /proc (Linux); the start time (clock ticks since boot) tells a process
    from a later one that got its pid again. Empty where /proc is missing.
    """
    table = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                stat = handle.read()
        except OSError:
            continue
        # fields after the command name (which may contain spaces): state ppid pgrp ...
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 19 and fields[0] not in ("Z", "X"):
            table[int(entry)] = (int(fields[1]), int(fields[2]), fields[19])
    return table


def run_processes(root: int, seen: dict[int, str] | None = None,
                  table: dict[int, tuple[int, int, str]] | None = None) -> dict[int, str]:
    """Every live process of the run whose process is ``root``: pid -> start time.

    That is ``root``, the members of its process group, the processes in
    ``seen`` that still live with the start time recorded there, and all their
    descendants. ``root`` itself counts only if ``seen`` does not record it
    with another start time (its pid taken by a new process).
    """
    table = process_table() if table is None else table
    seen = seen or {}
    starts = [pid for pid, start in seen.items() if pid in table and table[pid][2] == start]
    if root in table and seen.get(root, table[root][2]) == table[root][2]:
        starts.append(root)
    starts += [pid for pid, (_, pgrp, _) in table.items() if pgrp == root]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, starts
    while stack:
        pid = stack.pop()
        if pid not in found:
            found[pid] = table[pid][2]
            stack.extend(children.get(pid, ()))
    return found


def rss_bytes(pids) -> int:
    """Resident memory of the processes ``pids`` together (those gone count 0)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def kill_run(root: int, seen: dict[int, str] | None = None, spare: int | None = None) -> int:
    """SIGKILL every process of a run (:func:`run_processes`) but ``spare``; how many.

    They are stopped first, in rounds until no new one appears, then killed:
    a stopped process cannot start another between a scan and the kill, so
    a solver forking as fast as it can is caught too. ``spare`` (a run
    process cleaning up after itself, a forkserver) is neither stopped nor
    killed, nor is its group signalled.
    """
    import signal

    stopped: dict[int, str] = {}
    for _ in range(100):  # bounded: each round freezes every process the last one missed
        new = {pid: start for pid, start in run_processes(root, {**(seen or {}), **stopped}).items()
               if pid not in stopped and pid != spare}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        stopped.update(new)
    for pid in stopped:
        _signal(pid, signal.SIGKILL)
    if spare is None:
        try:
            os.killpg(root, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return len(stopped)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    """glibc, loaded once per process (None where it is not Linux's C library).

    Cached because ``find_library`` reads ``ldconfig -p`` (a subprocess) and
    every run process needs libc three times as it starts; the forkserver
    loads it once (execution/preload.py) and every run inherits it.
    """
    name = ctypes.util.find_library("c")
    if not name or os.uname().sysname != "Linux":
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _prctl(option: int, value: int) -> bool:
    """``prctl(option, value)`` (Linux; False elsewhere or when it fails)."""
    prctl = getattr(_libc(), "prctl", None)
    if prctl is None:
        return False
    return prctl(option, value, 0, 0, 0) == 0


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (PR_SET_CHILD_SUBREAPER, Linux).

    A process whose parent exits is re-parented to its nearest subreaper
    ancestor instead of init, so whatever a run starts stays in its tree.
    """
    return _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; else a no-op).

    Strictly: when the parent *thread* that forked it ends, so only call it
    where that thread lives as long as its process.
    """
    import signal

    return _prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
