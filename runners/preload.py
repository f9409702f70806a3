"""Imported once by the forkserver so that every run process starts warm.

Each run is a fork of the forkserver; importing torch, scikit-learn and every
plugin here (≈2 s) instead of in each run process makes small runs cheap.
A broken plugin must not take the forkserver down: the run that needs it will
report the import error as its own status row.
"""
from __future__ import annotations

import torch  # noqa: F401  (the heaviest import; shared copy-on-write)

from runners import registry

for _discover in (registry.tasks, registry.solvers, registry.metrics):
    try:
        _discover()
    except Exception:  # noqa: BLE001 — reported by the run that needs it
        _discover.cache_clear()
