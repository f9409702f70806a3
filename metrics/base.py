"""The metric contract.

A metric is a plain function ``fn(result, reference, *, rng) -> float`` with a
name and a version (part of every run id). It returns NaN, never raises, when
its input is not finite; :func:`applies` says whether it can judge a result
against a reference at all (e.g. Monte Carlo SymKL needs the solver's density).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class Metric:
    """A named, versioned metric.

    Parameters
    ----------
    name : str
        Column name in result rows.
    version : str
        Bump when the estimator changes (sample size, bandwidth rule, ...).
    fn : callable
        ``fn(result, reference, *, rng) -> float``.
    applies : callable
        ``applies(result, reference) -> bool``.
    lower_is_better : bool
        Direction used by the leaderboard and ``compare``.
    description : str
        One line for ``gfbench list`` and the report, stating the estimator's bias.
    """

    name: str
    version: str
    fn: MetricFn
    applies: Callable[[Any, Any], bool]
    lower_is_better: bool = True
    description: str = ""

    def __call__(self, result: Any, reference: Any, *, rng: np.random.Generator) -> float:
        """Evaluate; any failure or non-finite value becomes NaN."""
        try:
            value = float(self.fn(result, reference, rng=rng))
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, OverflowError,
                ZeroDivisionError):
            return float("nan")
        return value if np.isfinite(value) else float("nan")


def finite_samples(x: np.ndarray | None) -> bool:
    """True when ``x`` is a non-empty finite 2-D sample array."""
    return x is not None and x.ndim == 2 and x.shape[0] > 0 and bool(np.isfinite(x).all())


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``x``, drawn without replacement when there are more."""
    if x.shape[0] <= n:
        return x
    return x[rng.choice(x.shape[0], size=n, replace=False)]
