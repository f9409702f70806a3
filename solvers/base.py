"""The solver contract.

A solver is one class (benchopt style) with a class-attribute parameter grid.
The runner builds it with one value per parameter, asks :meth:`Solver.skip`,
calls :meth:`Solver.setup` (untimed: build networks, draw initial particles,
pre-train) and then :meth:`Solver.run` (timed), which returns one
:class:`SolverResult` per requested evaluation time.

Solvers never read global random state: ``setup`` receives a
``numpy.random.SeedSequence`` and derives whatever generators it needs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

#: a solver can return samples
SAMPLES = "samples"
#: a solver can return a normalised log-density callable
LOG_DENSITY = "log_density"
#: a solver can run on a CUDA device
GPU = "gpu"
#: a solver runs only on a CUDA device
GPU_ONLY = "gpu_only"
#: a solver handles observation updates (filtering tasks)
FILTERING = "filtering"


@dataclass
class SolverResult:
    """What a solver hands back at one evaluation time.

    Parameters
    ----------
    samples : ndarray (n, dim) float64 or None
        Samples of the solver's law at that time (particles, pushed samples,
        resampled draws). Metrics that need more samples than given use all.
    log_density : callable or None
        ``log_density(x (m, dim)) -> (m,)``, the solver's own *normalised*
        log-density. It must not use the reference law.
    draw : callable or None
        ``draw(n, rng) -> ((n, dim) samples, (n,) log-densities)``: fresh
        samples of the solver's law with their log-density, for solvers whose
        samples come with a cheap density (change of variables). Lets Monte
        Carlo metrics use exactly the sample size they need.
    info : dict
        Solver diagnostics (iterations, acceptance rate, ...), kept in the row.
    """

    samples: np.ndarray | None = None
    log_density: Callable[[np.ndarray], np.ndarray] | None = None
    draw: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """Execution settings the runner passes to a solver.

    Parameters
    ----------
    device : str
        ``"cpu"`` or ``"cuda"`` (``"cuda:0"``...). A solver without the GPU
        capability always gets ``"cpu"``.
    n_threads : int
        CPU threads this run may use (already applied to torch and BLAS).
    progress : callable
        ``progress(done, total, message)``; cheap, call it every step or so.
    """

    device: str = "cpu"
    n_threads: int = 1
    progress: Callable[[int, int, str], None] = lambda done, total, message="": None


class Solver(abc.ABC):
    """Base class of every solver.

    Class attributes
    ----------------
    name : str
        Registry name, e.g. ``"em"``.
    version : str
        Bump on behavioural changes (the module's source hash is part of the
        run id too, so edits invalidate cached runs automatically).
    parameters : dict[str, list]
        Default parameter grid; the runner expands its Cartesian product.
    capabilities : frozenset of str
        Subset of {SAMPLES, LOG_DENSITY, GPU, GPU_ONLY, FILTERING}.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, list]] = {}
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLES})
    description: ClassVar[str] = ""

    def __init__(self, **params: Any) -> None:
        defaults = {k: v[0] for k, v in self.parameters.items()}
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(f"solver {self.name!r} has no parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(defaults)}")
        self.params: dict[str, Any] = {**defaults, **params}
        self.validate_params(self.params)

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` with a clear message for invalid values.

        The default rejects non-finite numbers; subclasses add range checks.
        """
        for key, value in params.items():
            if isinstance(value, float) and not np.isfinite(value):
                raise ValueError(f"solver {cls.name!r}: parameter {key}={value} is not finite")

    def skip(self, task: Any) -> tuple[bool, str]:
        """Whether this solver cannot run ``task`` (and why). Never raises."""
        return False, ""

    @abc.abstractmethod
    def setup(self, task: Any, times: Sequence[float], seed: np.random.SeedSequence,
              context: RunContext) -> None:
        """Untimed preparation for ``task`` at evaluation ``times``."""

    @abc.abstractmethod
    def run(self) -> Mapping[float, SolverResult]:
        """Timed solve; one result per evaluation time given to ``setup``."""


def require_positive(solver: str, params: Mapping[str, Any], *keys: str) -> None:
    """Validation helper: each ``params[key]`` must be a finite number > 0."""
    for key in keys:
        value = params.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not np.isfinite(value) or value <= 0:
            raise ValueError(f"solver {solver!r}: parameter {key} must be a positive number, "
                             f"got {value!r}")


def steps_to_times(times: Sequence[float], dt: float) -> list[int]:
    """Number of steps of size ``dt`` to reach each time (rounded, checked)."""
    steps = [int(round(t / dt)) for t in times]
    for t, k in zip(times, steps):
        if abs(k * dt - t) > 1e-9 * max(1.0, t):
            raise ValueError(f"time {t} is not a multiple of the step {dt}")
    return steps
