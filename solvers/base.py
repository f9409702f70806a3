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

from numerics.timesteps import steps_to_times  # noqa: F401  (part of the solver API)

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


#: the law of a result: fresh i.i.d. draws with a normalised density (``draw`` + ``log_density``)
IID_DENSITY = "iid_density"
#: the law of a result: fresh i.i.d. draws, no density (``draw`` returning ``(x, None)``)
IID = "iid"
#: the law of a result: a fixed, possibly weighted, particle set (the empirical measure itself)
PARTICLES = "particles"
LAWS = (IID_DENSITY, IID, PARTICLES)


@dataclass
class SolverResult:
    """What a solver hands back at one evaluation time: one law, stated explicitly.

    Every metric judges the law named by ``law``, so a solver's score is a
    property of what it claims to output:

    ``"iid_density"``
        ``draw(n, rng)`` gives fresh i.i.d. samples with their log-density and
        ``log_density(x)`` evaluates the same normalised density anywhere
        (pushed samples, a KDE, a grid interpolant, a Gaussian).
    ``"iid"``
        ``draw(n, rng)`` gives fresh i.i.d. samples, ``(x, None)``; no density.
    ``"particles"``
        the law *is* the empirical measure Σ w_i δ(x_i) of ``samples`` (weights
        ``weights``, uniform when None): N particles are judged as N particles,
        not as N draws of some better law (EM, SVGD).

    Parameters
    ----------
    samples : ndarray (n, dim) float64 or None
        The particles (``"particles"``), or a few samples of the law for
        figures and diagnostics (i.i.d. laws; metrics draw their own).
    log_density : callable or None
        ``log_density(x (m, dim)) -> (m,)``, the solver's own *normalised*
        log-density (``"iid_density"`` only). It must not use the reference law.
    draw : callable or None
        ``draw(n, rng) -> ((n, dim) samples, (n,) log-densities or None)``.
    weights : ndarray (n,) or None
        Non-negative particle weights (``"particles"`` only), normalised here.
    law : str or None
        One of :data:`LAWS`; inferred when None (``draw`` and ``log_density``:
        ``"iid_density"``; ``draw``: ``"iid"``; else ``"particles"``).
    info : dict
        Solver diagnostics (iterations, acceptance rate, ...), kept in the row.
        ``info["diagnostics"]``, where a solver sets it, is a flat ``dict[str,
        float]`` of its *self-diagnostics*: internal measures that show whether
        it failed without looking at any reference (SCVM, SBTM: the relative
        self-consistency residuals of :func:`self_consistency_residual`, and the
        training loss; see each solver's docstring). Keys are omitted, never NaN.
    """

    samples: np.ndarray | None = None
    log_density: Callable[[np.ndarray], np.ndarray] | None = None
    draw: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    weights: np.ndarray | None = None
    law: str | None = None

    def __post_init__(self) -> None:
        if self.law is None:
            self.law = (IID_DENSITY if self.draw is not None and self.log_density is not None
                        else IID if self.draw is not None else PARTICLES)
        if self.law not in LAWS:
            raise ValueError(f"SolverResult: law must be one of {LAWS}, got {self.law!r}")
        if self.law == IID_DENSITY and (self.draw is None or self.log_density is None):
            raise ValueError("SolverResult: law 'iid_density' needs draw and log_density")
        if self.law == IID and self.draw is None:
            raise ValueError("SolverResult: law 'iid' needs draw")
        if self.law == PARTICLES:
            if self.samples is None:
                raise ValueError("SolverResult: law 'particles' needs samples")
            if self.log_density is not None:
                raise ValueError("SolverResult: a particle set has no density; a solver with "
                                 "one returns law 'iid_density' (draw + log_density)")
        if self.weights is not None:
            if self.law != PARTICLES:
                raise ValueError("SolverResult: weights belong to a particle set")
            w = np.asarray(self.weights, dtype=np.float64).reshape(-1)
            n = None if self.samples is None else np.shape(self.samples)[0]
            if n is not None and w.shape[0] != n:
                raise ValueError(f"SolverResult: {w.shape[0]} weights for {n} particles")
            if w.size and np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0:
                w = w / w.sum()
            self.weights = w

    @property
    def has_density(self) -> bool:
        """Whether the law comes with a normalised density."""
        return self.law == IID_DENSITY


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
    labels : dict[str, str]
        Short names of parameters for tables (``{"n_particles": "N"}`` makes
        ``em(N=1000)``).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    parameters: ClassVar[dict[str, list]] = {}
    capabilities: ClassVar[frozenset[str]] = frozenset({SAMPLES})
    description: ClassVar[str] = ""
    labels: ClassVar[dict[str, str]] = {}

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


def self_consistency_residual(velocity_e: np.ndarray, drift_e: np.ndarray, score_e: np.ndarray,
                              beta: float) -> dict[str, float]:
    """Relative self-consistency residuals of a probability flow, from directional terms.

    A flow with velocity v moves its own law ρ by the Fokker–Planck equation iff
    v = b − β⁻¹∇log ρ (b = −∇Φ) on ρ; with ρ0 given, the exact solution is the
    only such flow. Given, at points x ~ ρ and unit directions e, the components
    ``velocity_e`` = e·v, ``drift_e`` = e·b and ``score_e`` = ∂_e log ρ (of the
    law the solver returns), with r = e·v − e·b + β⁻¹∂_e log ρ and the size of
    the two terms that cancel, m² = (e·b)² + (β⁻¹∂_e log ρ)² (not |v|², which
    vanishes near equilibrium):

    - ``self_consistency``: the median of |r|/m over the points: 0 for a
      self-consistent flow, about 1 when v misses the score or the drift. The
      median because the mean square is dominated by the tails' few points
      (measured on the tilted double well of tests/test_generic_potentials.py:
      90 % and 99 % quantiles of |r|/m 0.8 and 2.1 for a flow whose well masses
      are right);
    - ``self_consistency_l2``: E[r²]/E[m²], the L² version.

    Non-finite entries (points without a log-density) are left out; an empty
    dict when nothing is left.
    """
    diffusion = np.asarray(score_e, dtype=np.float64) / float(beta)
    drift_e = np.asarray(drift_e, dtype=np.float64)
    resid = np.asarray(velocity_e, dtype=np.float64) - drift_e + diffusion
    size_sq = drift_e ** 2 + diffusion ** 2
    ok = np.isfinite(resid) & np.isfinite(size_sq) & (size_sq > 0)
    if not ok.any():
        return {}
    return {"self_consistency": float(np.median(np.abs(resid[ok]) / np.sqrt(size_sq[ok]))),
            "self_consistency_l2": float(np.sum(resid[ok] ** 2) / np.sum(size_sq[ok]))}


def random_directions(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` independent uniform unit vectors ``(n, dim)``."""
    e = rng.standard_normal((n, dim))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def require_positive(solver: str, params: Mapping[str, Any], *keys: str) -> None:
    """Validation helper: each ``params[key]`` must be a finite number > 0."""
    for key in keys:
        value = params.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) \
                or not np.isfinite(value) or value <= 0:
            raise ValueError(f"solver {solver!r}: parameter {key} must be a positive number, "
                             f"got {value!r}")
