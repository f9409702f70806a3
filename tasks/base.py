"""The task contract.

A task owns everything about the problem and nothing about how it is solved:
the potential Φ (numpy and torch), the inverse temperature β, the initial law
ρ0, the evaluation times and a reference law at each of them, together with
the provenance of that reference (sbibm style).

All arrays are float64 with samples laid out as ``(n, dim)``. Randomness is
never read from global state: a task is built from a ``numpy.random.SeedSequence``
(the *task seed*), and samplers take a ``numpy.random.Generator``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

Array = np.ndarray
Sampler = Callable[[int, np.random.Generator], Array]
LogDensity = Callable[[Array], Array]


@dataclass(frozen=True)
class Reference:
    """The law a solver is compared with at one evaluation time.

    Parameters
    ----------
    t : float
        Evaluation time.
    sample : callable or None
        ``sample(n, rng) -> (n, dim)`` exact or numerical samples.
    log_density : callable or None
        ``log_density(x (n, dim)) -> (n,)``, normalised.
    provenance : str
        How the reference was obtained ("closed form ...", "Chang-Cooper ...").
    error_estimate : float
        An estimate of the reference's own error in the metric's units
        (0.0 for a closed form).
    grid : ndarray or None
        For 1-D numerical references: the grid ``(m,)`` on which ``density``
        is tabulated; grid metrics integrate on it.
    density : ndarray or None
        Normalised density values on ``grid``.
    extras : mapping
        Task-specific data used by task metrics (e.g. test sets).
    moments : (mean (dim,), covariance (dim, dim)) or None
        Exact first two moments, for laws that have them in closed form
        (Gaussian marginals): the moment-error metrics use them.
    """

    t: float
    sample: Sampler | None = None
    log_density: LogDensity | None = None
    provenance: str = ""
    error_estimate: float = 0.0
    grid: Array | None = None
    density: Array | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)
    moments: tuple[Array, Array] | None = None


@dataclass(frozen=True)
class Observation:
    """A noisy observation ``y`` of the state at time ``t`` (filtering tasks)."""

    t: float
    y: Array


class Task(abc.ABC):
    """Base class of every task.

    Subclasses set the class attributes and implement the abstract methods.
    The constructor receives the task seed and one value per entry of
    ``parameters``; it must be cheap enough to run once per run (expensive
    references are computed lazily in :meth:`reference`).

    Class attributes
    ----------------
    name : str
        Registry name, e.g. ``"ou"``.
    version : str
        Bump whenever the task's law, reference or data change: it is part of
        every run id, so ``compare`` refuses to mix versions.
    parameters : dict[str, list]
        The default parameter grid, e.g. ``{"dim": [1, 2, ..., 12]}``.
    default_times : tuple of float
        Evaluation times used when the run does not select a subset.
    bounds : dict[str, tuple]
        Inclusive ``(low, high)`` range of each numeric parameter (e.g.
        ``{"dim": (1, 128)}``): a value outside is bad input, refused before
        anything runs.
    replicate_parameters : tuple of str
        Parameters that only index replicates of the same problem (a random
        data split): summaries pool them like seeds.
    primary_metric : str
        The metric the leaderboard ranks every solver by; ``ranking_metrics``
        adds the others it ranks on (e.g. Monte Carlo SymKL for the solvers
        with a density).
    """

    name: ClassVar[str]
    version: ClassVar[str]
    parameters: ClassVar[dict[str, list]] = {}
    default_times: ClassVar[tuple[float, ...]] = ()
    description: ClassVar[str] = ""
    #: metric the leaderboard ranks by (a metric name; its direction comes from the metric)
    primary_metric: ClassVar[str] = "energy"
    #: every metric the leaderboard ranks on, the primary one first
    ranking_metrics: ClassVar[tuple[str, ...]] = ()
    bounds: ClassVar[dict[str, tuple[float, float]]] = {}
    #: True when the reference at every t is the stationary law ρ* (a sampler of ρ*
    #: such as SVGD is then judged on what it targets; on ρ_t at finite t it is not)
    stationary: ClassVar[bool] = False
    replicate_parameters: ClassVar[tuple[str, ...]] = ()

    #: state dimension, set by the constructor
    dim: int
    #: inverse temperature β
    beta: float = 1.0
    #: observations, for filtering tasks (empty otherwise)
    observations: Sequence[Observation] = ()

    def __init__(self, seed: np.random.SeedSequence, **params: Any) -> None:
        self.seed = seed
        self.params = dict(params)

    # --- potential -------------------------------------------------------
    # Only ``potential_torch`` is required: the numpy forms and the torch gradient
    # default to it (float64, autograd), so a plugin task that writes Φ once in torch
    # runs with every solver; tasks override them with closed forms where they have one.
    def potential(self, x: Array) -> Array:
        """Φ at ``x (n, dim)`` -> ``(n,)``; by default ``potential_torch`` in float64."""
        import torch

        with torch.no_grad():
            xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
            return self.potential_torch(xt).numpy()

    def grad_potential(self, x: Array) -> Array:
        """∇Φ at ``x (n, dim)`` -> ``(n, dim)``; by default autograd of ``potential_torch``."""
        import torch

        xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
        return self.grad_potential_torch(xt).numpy()

    @abc.abstractmethod
    def potential_torch(self, x: "torch.Tensor", batch: Any = None) -> "torch.Tensor":  # noqa: F821
        """Φ for a torch tensor ``(n, dim)`` -> ``(n,)``, differentiable.

        ``batch`` is an optional data minibatch (from :meth:`data_batch`) for
        potentials defined by large data; it gives an unbiased estimate.
        """

    def grad_potential_torch(self, x: "torch.Tensor", batch: Any = None) -> "torch.Tensor":  # noqa: F821
        """∇Φ for a torch tensor, by autograd unless a subclass does better.

        Differentiable when ``x`` requires grad (the graph is kept with
        ``create_graph``), so second derivatives (∇²Φ, as SBTM's densities need)
        can be taken through it; otherwise a plain, detached gradient.
        """
        import torch

        keep = x.requires_grad and torch.is_grad_enabled()
        with torch.enable_grad():
            xr = x if keep else x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.potential_torch(xr, batch).sum(), xr,
                                       create_graph=keep)
        return g

    def data_batch(self, size: int, rng: np.random.Generator) -> Any:
        """A random data minibatch for stochastic potentials (None if exact)."""
        return None

    # --- initial law -----------------------------------------------------
    @abc.abstractmethod
    def sample_initial(self, n: int, rng: np.random.Generator) -> Array:
        """``n`` samples of ρ0 -> ``(n, dim)``."""

    @abc.abstractmethod
    def log_density_initial(self, x: Array) -> Array:
        """Normalised log ρ0 at ``x (n, dim)`` -> ``(n,)``."""

    # --- references ------------------------------------------------------
    @abc.abstractmethod
    def reference(self, t: float) -> Reference:
        """The reference law at time ``t`` (one of the evaluation times)."""

    def observation_log_likelihood(self, x: Array, y: Array) -> Array:
        """log p(y | x) for each row of ``x`` (filtering tasks only)."""
        raise TypeError(f"task {self.name!r} has no observations")

    # --- helpers ---------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Plain-dict summary used in result rows and ``gfbench list``."""
        return {"task": self.name, "task_version": self.version, "dim": self.dim,
                "beta": self.beta, **{f"task.{k}": v for k, v in self.params.items()}}

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` with a clear message for invalid parameter values.

        The default checks names only; subclasses add value checks.
        """
        unknown = set(params) - set(cls.parameters)
        if unknown:
            raise ValueError(f"task {cls.name!r} has no parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.parameters)}")
        for key, (low, high) in cls.bounds.items():
            value = params.get(key)
            if isinstance(value, (int, float, np.integer, np.floating)) \
                    and not isinstance(value, bool) and not low <= value <= high:
                raise ValueError(f"task {cls.name!r}: {key}={value!r} is outside its range "
                                 f"[{low:g}, {high:g}]")

    @classmethod
    def rankings(cls) -> tuple[str, ...]:
        """The metrics the leaderboard ranks on: the primary one, then the others."""
        return (cls.primary_metric,) + tuple(m for m in cls.ranking_metrics
                                            if m != cls.primary_metric)

    @classmethod
    def check_inputs(cls, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if an external input the task needs is unusable.

        Called once per task configuration before any run starts, so that a
        missing, corrupt or mismatching data file is bad input (exit 2, nothing
        written) rather than a grid of error rows. The default needs nothing.
        """


def gaussian_log_density(x: Array, mean: Array, cov: Array) -> Array:
    """Normalised log N(x; mean, cov) for ``x (n, d)`` via a Cholesky factor."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    d = mean.shape[0]
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)  # (d, n)
    log_det = 2.0 * np.log(np.diag(chol)).sum()
    return -0.5 * (np.sum(z * z, axis=0) + d * np.log(2 * np.pi) + log_det)


def gaussian_sampler(mean: Array, cov: Array) -> Sampler:
    """A sampler ``(n, rng) -> (n, d)`` of N(mean, cov)."""
    chol = np.linalg.cholesky(cov)

    def sample(n: int, rng: np.random.Generator) -> Array:
        return mean + rng.standard_normal((n, mean.shape[0])) @ chol.T

    return sample
