"""Evaluation times as whole numbers of steps."""
from __future__ import annotations

from typing import Sequence


def steps_to_times(times: Sequence[float], dt: float) -> list[int]:
    """Number of steps of size ``dt`` to reach each time (rounded, checked)."""
    steps = [int(round(t / dt)) for t in times]
    for t, k in zip(times, steps):
        if abs(k * dt - t) > 1e-9 * max(1.0, t):
            raise ValueError(f"time {t} is not a multiple of the step {dt}")
    return steps
