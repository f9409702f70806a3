"""Convergence to the stationary law of a Gaussian-mixture potential.

Target ρ* ∝ exp(−βΦ) with β = 1 and Φ = −log ρ*, where ρ* is the equal-weight
mixture of M unit-covariance Gaussians whose centres are drawn uniformly in
[−l/2, l/2]^D from the task seed. ρ0 = N(0, 16 I). As in Mokrov et al. (2021),
§4.2: D = 2, 4, ..., 12 with M = 5, 6, ..., 10 and l = 10, final time t = 4.

Reference: the only law known in closed form is ρ* itself (exact samples and
exact normalised log-density), so ``reference(t)`` is ρ* at *every* t. At
t = 4 the flow is close to stationary; at earlier times the distance to ρ*
measures how far a solver has converged, not its accuracy at time t (the
true ρ_t is unknown). The provenance string of each reference says so.
Caveat: the flow is metastable (mass moves between modes slowly), so even at
t = 4 the exact ρ_t can differ visibly from ρ*: with 1500 EM particles in D = 2
(seed 3) the energy distance to ρ* is 0.24 at t = 4 and 0.01 at t = 40.

``n_components = 0`` (the default) selects the study's pairing M = 4 + D // 2
(5, 6, ..., 10 for D = 2, 4, ..., 12; 10 for D = 13, 20 for D = 32).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from tasks.base import Reference, Task

LOG_2PI = float(np.log(2.0 * np.pi))
INITIAL_VARIANCE = 16.0


def default_components(dim: int) -> int:
    """The study's number of mixture components for dimension ``dim``."""
    return 4 + dim // 2


def mixture_log_density(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Normalised log-density ``(n,)`` of the equal-weight unit-covariance mixture.

    Parameters
    ----------
    x : ndarray (n, d) float64
    centres : ndarray (m, d) float64
    """
    sq = (np.sum(x * x, axis=1)[:, None] - 2.0 * x @ centres.T
          + np.sum(centres * centres, axis=1)[None, :])  # (n, m)
    m, d = centres.shape
    return logsumexp(-0.5 * sq, axis=1) - np.log(m) - 0.5 * d * LOG_2PI


def mixture_responsibilities(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Posterior component probabilities ``(n, m)`` at ``x (n, d)``."""
    sq = (np.sum(x * x, axis=1)[:, None] - 2.0 * x @ centres.T
          + np.sum(centres * centres, axis=1)[None, :])
    logits = -0.5 * sq
    return np.exp(logits - logsumexp(logits, axis=1, keepdims=True))


def mixture_sampler(centres: np.ndarray):
    """A sampler ``(n, rng) -> (n, d)`` of the equal-weight unit-covariance mixture."""

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        labels = rng.integers(centres.shape[0], size=n)
        return centres[labels] + rng.standard_normal((n, centres.shape[1]))

    return sample


class StationaryGMM(Task):
    name = "stationary_gmm"
    version = "1"
    parameters = {"dim": [2, 4, 6, 8, 10, 12], "n_components": [0], "length": [10.0]}
    default_times = (1.0, 2.0, 3.0, 4.0)
    description = ("convergence to a Gaussian-mixture stationary law from N(0, 16 I); "
                   "reference = exact rho* at every t")
    primary_metric = "energy"

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2, n_components: int = 0,
                 length: float = 10.0) -> None:
        super().__init__(seed, dim=dim, n_components=n_components, length=length)
        self.validate_params(self.params)
        self.dim = int(dim)
        self.beta = 1.0
        self.n_components = int(n_components) or default_components(self.dim)
        self.length = float(length)
        rng = np.random.default_rng(seed)
        self.centres = rng.uniform(-0.5 * self.length, 0.5 * self.length,
                                   size=(self.n_components, self.dim))

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 2)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'stationary_gmm': dim must be an integer >= 1, got {dim!r}")
        m = params.get("n_components", 0)
        if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 0:
            raise ValueError("task 'stationary_gmm': n_components must be an integer >= 1 "
                             f"(or 0 for the study's 4 + dim // 2), got {m!r}")
        length = params.get("length", 10.0)
        if not isinstance(length, (int, float)) or isinstance(length, bool) \
                or not np.isfinite(length) or length <= 0:
            raise ValueError(f"task 'stationary_gmm': length must be a positive number, "
                             f"got {length!r}")

    # potential: Φ = −log ρ*, so exp(−Φ) is already normalised ---------------
    def potential(self, x):
        return -mixture_log_density(np.asarray(x, dtype=np.float64), self.centres)

    def grad_potential(self, x):
        x = np.asarray(x, dtype=np.float64)
        resp = mixture_responsibilities(x, self.centres)
        return x - resp @ self.centres

    def _centres_torch(self, x):
        import torch

        return torch.as_tensor(self.centres, dtype=x.dtype, device=x.device)

    def potential_torch(self, x, batch=None):
        import torch

        c = self._centres_torch(x)
        sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        m, d = self.centres.shape
        log_rho = torch.logsumexp(-0.5 * sq, dim=1) - np.log(m) - 0.5 * d * LOG_2PI
        return -log_rho

    def grad_potential_torch(self, x, batch=None):
        import torch

        c = self._centres_torch(x)
        sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
        resp = torch.softmax(-0.5 * sq, dim=1)
        return x - resp @ c

    # initial law -------------------------------------------------------------
    def sample_initial(self, n, rng):
        return np.sqrt(INITIAL_VARIANCE) * rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        x = np.asarray(x, dtype=np.float64)
        return -0.5 * (np.sum(x * x, axis=1) / INITIAL_VARIANCE
                       + self.dim * (LOG_2PI + np.log(INITIAL_VARIANCE)))

    # reference ---------------------------------------------------------------
    def log_density_stationary(self, x: np.ndarray) -> np.ndarray:
        """Exact normalised log ρ* at ``x (n, dim)``."""
        return mixture_log_density(np.asarray(x, dtype=np.float64), self.centres)

    def reference(self, t):
        note = ("exact stationary law rho* (equal-weight unit-covariance Gaussian mixture), "
                f"used as the reference at every t; at t={float(t):g} the true rho_t is "
                "unknown, so this measures convergence to rho*")
        return Reference(t=float(t), sample=mixture_sampler(self.centres),
                         log_density=self.log_density_stationary, provenance=note,
                         error_estimate=0.0)

    def has_closed_form(self) -> bool:
        """The oracle returns ρ*, i.e. the reference itself (a metric noise floor)."""
        return True
