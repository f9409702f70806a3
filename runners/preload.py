"""Imported once by the forkserver so that every run process starts warm.

Each run is a fork of the forkserver. The modules a grid's runs need — its
tasks', solvers' and metrics' (``GFBENCH_PRELOAD``, set by the runner before
the server starts) — are imported here once instead of in every run process:
torch only when a solver of the grid imports it, so a grid without one starts
in well under a second. A plugin that fails to import must not take the
forkserver down: the run that needs it reports the error as its own row.
"""
from __future__ import annotations

import importlib
import os

import runners.execute  # noqa: F401  (every run needs it)

for _name in filter(None, os.environ.get("GFBENCH_PRELOAD", "").split(",")):
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 — reported by the run that needs it
        pass
