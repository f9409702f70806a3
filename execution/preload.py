"""Imported once by the forkserver so that every run process starts warm.

Each run is a fork of the forkserver. The modules a grid's runs need — its
tasks', solvers' and metrics' (``GFBENCH_PRELOAD``, set by the runner before
the server starts) — are imported here once instead of in every run process:
torch only when a solver of the grid imports it, so a grid without one starts
in well under a second. A plugin that fails to import must not take the
forkserver down: the run that needs it reports the error as its own row.

The forkserver is also what cleans up after a killed runner. It leads a
process group of its own (a ``kill`` of the runner's group, or a terminal's
signals, leave it to do its work), it exits when its client — the runner or
the pool worker that supervises runs — is gone, and on its way out it kills
every process of its runs: a run process whose solver holds the GIL cannot
run its own watchdog, and its children would not die with it.
"""
from __future__ import annotations

import atexit
import importlib
import os

import execution.execute  # noqa: F401  (every run needs it)


def _kill_runs(server_pid: int) -> None:
    """At the forkserver's exit: kill every process of its runs (each run's tree)."""
    if os.getpid() != server_pid:  # a run process (forked with this handler) never cleans up
        return
    from execution.resources import kill_run

    kill_run(server_pid, spare=server_pid)


try:
    os.setpgid(0, 0)
except OSError:
    pass  # a session leader already leads its group
atexit.register(_kill_runs, os.getpid())

for _name in filter(None, os.environ.get("GFBENCH_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 — reported by the run that needs it
        pass
