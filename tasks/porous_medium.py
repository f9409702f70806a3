"""The porous-medium equation ∂ρ/∂t = Δρ^m from a Barenblatt profile: nonlinear diffusion, exact.

The flow is the Wasserstein gradient flow of U(ρ) = ∫ρ^m/(m − 1) (no
potential, no interaction; β = 1 multiplies U). Its unit-mass source-type
solution (Barenblatt–Pattle; Vázquez, *The Porous Medium Equation*, 2007,
§17.5), centred at c, is

    ρ(x, τ) = τ^{−α} (C − k |ξ|²)₊^{1/(m−1)},   ξ = (x − c) τ^{−α/D},
    α = D / (D(m − 1) + 2),   k = α(m − 1) / (2mD),

with C fixed by ∫ρ = 1: writing p = 1/(m − 1) and R² = C/k, the mass is
π^{D/2} R^D C^p B(D/2, p + 1) / Γ(D/2), so
C^{D/2+p} = k^{D/2} Γ(D/2) / (π^{D/2} B(D/2, p + 1)) (log-gamma: no overflow
at large D). The run starts at τ = t0 = 1e-3, so ρ0 is itself a Barenblatt
profile, and the task's time t is τ − t0. Support radius R(τ) = R(1) τ^{α/D}
and per-axis variance R(τ)²/(D + 2p + 2): at t0 the per-axis standard
deviation is 0.09 … 0.25 (D = 1 … 16, m = 2, 3), and by the last default
time (τ = 0.101, a factor 101) the radius has grown by 101^{1/(D(m−1)+2)}:
×4.7 (D = 1, m = 2), ×1.6 (D = 8, m = 2), ×1.3 (D = 8, m = 3).

Sampling is exact: the radius |x − c| = R s with s² ~ Beta(D/2, p + 1)
(the radial law ∝ r^{D−1}(1 − r²/R²)^p), drawn by inverse CDF
(``scipy.special.betaincinv`` of a uniform), the direction uniform on the
sphere. The log-density is −∞ outside the ball of radius R.

Why not SymKL. The support is compact: any solver law with mass outside
the ball has KL(p‖ref) = +∞, any that misses part of the ball has
KL(ref‖p) = +∞ — a particle method smoothed by a KDE, a network's
push-forward with a slightly wrong front, any Gaussian-tailed density: all
score +∞, a verdict that cannot rank them. So this task ranks by the energy
distance (finite for every law with two moments, unbiased on samples, and
sensitive to the spread and shape of the profile) and then by the
covariance error: the covariance is (R²/(D + 2p + 2)) I exactly, so
``cov_error`` measures the spreading rate (the τ^{2α/D} law of the PME)
with no noise from a density. The centre c = (0.5/√D)·(1, …, 1) (‖c‖ = 0.5)
keeps ``mean_error`` finite (it divides by ‖m‖); the PME is
translation-invariant, so c changes nothing else. SymKL is still computed
where a solver has a density (the metric's +∞ note says which side misses).

Reference checks that share no code with it (tests/test_free_energy_tasks.py):
a radial finite-volume solution of the PME from the task's ρ0, the
normalisation by quadrature, and a KS test of sampled radii against the
quadrature CDF of the log-density.
"""
from __future__ import annotations

import numpy as np
from scipy.special import betaincinv, betaln, gammaln

from tasks.base import Reference
from tasks.free_energy import POROUS_MEDIUM, FreeEnergy, FreeEnergyTask

#: the physical time at which the run starts (task time t = τ − T0)
T0 = 1e-3
#: distance of the Barenblatt centre from the origin
CENTRE_NORM = 0.5


def barenblatt_constants(dim: int, m: float) -> tuple[float, float, float]:
    """(α, k, C) of the unit-mass Barenblatt profile in ``dim`` dimensions."""
    p = 1.0 / (m - 1.0)
    alpha = dim / (dim * (m - 1.0) + 2.0)
    k = alpha * (m - 1.0) / (2.0 * m * dim)
    log_c = (0.5 * dim * np.log(k) + gammaln(0.5 * dim) - 0.5 * dim * np.log(np.pi)
             - betaln(0.5 * dim, p + 1.0)) / (0.5 * dim + p)
    return alpha, k, float(np.exp(log_c))


def support_radius(tau: float, dim: int, m: float) -> float:
    """R(τ): the profile is positive on the open ball of this radius around the centre."""
    alpha, k, c = barenblatt_constants(dim, m)
    return float(np.sqrt(c / k) * tau ** (alpha / dim))


def barenblatt_log_density(x: np.ndarray, tau: float, m: float, centre: np.ndarray
                           ) -> np.ndarray:
    """log ρ(x, τ) for ``x (n, dim)`` -> ``(n,)``, −∞ outside the support."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64))
    dim = x.shape[1]
    alpha, k, c = barenblatt_constants(dim, m)
    xi_sq = np.sum((x - centre) ** 2, axis=1) * tau ** (-2.0 * alpha / dim)
    inner = c - k * xi_sq
    out = np.full(x.shape[0], -np.inf)
    inside = inner > 0
    out[inside] = -alpha * np.log(tau) + np.log(inner[inside]) / (m - 1.0)
    return out


def barenblatt_sample(n: int, rng: np.random.Generator, tau: float, m: float,
                      centre: np.ndarray) -> np.ndarray:
    """``n`` exact draws ``(n, dim)`` of ρ(·, τ): radius by inverse CDF, uniform direction."""
    dim = centre.shape[0]
    p = 1.0 / (m - 1.0)
    s_sq = betaincinv(0.5 * dim, p + 1.0, rng.uniform(size=n))
    direction = rng.standard_normal((n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return centre + (support_radius(tau, dim, m) * np.sqrt(s_sq))[:, None] * direction


def barenblatt_covariance(tau: float, dim: int, m: float) -> np.ndarray:
    """Covariance ``(dim, dim)`` of ρ(·, τ): R² E[s²]/D · I = R²/(D + 2p + 2) · I."""
    p = 1.0 / (m - 1.0)
    return support_radius(tau, dim, m) ** 2 / (dim + 2.0 * p + 2.0) * np.eye(dim)


class PorousMedium(FreeEnergyTask):
    name = "porous_medium"
    version = "1"
    parameters = {"dim": [1, 2, 4, 8], "m": [2.0, 3.0]}
    default_times = (0.005, 0.02, 0.1)
    description = "porous-medium equation from a Barenblatt profile, exact (compact support)"
    primary_metric = "energy"
    ranking_metrics = ("energy", "cov_error")
    bounds = {"dim": (1, 32), "m": (1.1, 5.0)}

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2, m: float = 2.0) -> None:
        super().__init__(seed, dim=dim, m=m)
        self.validate_params({"dim": dim, "m": m})
        self.dim = int(dim)
        self.m = float(m)
        self.beta = 1.0
        self.free_energy = FreeEnergy(frozenset({POROUS_MEDIUM}), beta=self.beta,
                                      exponent=self.m)
        self.centre = np.full(self.dim, CENTRE_NORM / np.sqrt(self.dim))
        self.t0 = T0

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 1)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'porous_medium': dim must be an integer >= 1, got {dim!r}")
        m = params.get("m", 2.0)
        if isinstance(m, bool) or not isinstance(m, (int, float, np.integer, np.floating)) \
                or not m > 1:
            raise ValueError(f"task 'porous_medium': m must be a number > 1, got {m!r}")

    # no potential: V = 0 ------------------------------------------------------------------
    def potential(self, x):
        return np.zeros(np.shape(x)[0])

    def grad_potential(self, x):
        return np.zeros(np.shape(x), dtype=np.float64)

    def potential_torch(self, x, batch=None):
        return x.new_zeros(x.shape[0])

    def grad_potential_torch(self, x, batch=None):
        return x.new_zeros(x.shape)

    # the law at task time t (physical time τ = t0 + t) --------------------------------------
    def log_density(self, x: np.ndarray, t: float) -> np.ndarray:
        """Normalised log ρ at task time ``t``, ``x (n, dim)`` -> ``(n,)`` (−∞ off the support)."""
        return barenblatt_log_density(x, self.t0 + float(t), self.m, self.centre)

    def sample(self, n: int, rng: np.random.Generator, t: float) -> np.ndarray:
        """``n`` exact samples ``(n, dim)`` at task time ``t``."""
        return barenblatt_sample(n, rng, self.t0 + float(t), self.m, self.centre)

    def support_radius(self, t: float) -> float:
        """Radius of the support at task time ``t``."""
        return support_radius(self.t0 + float(t), self.dim, self.m)

    def sample_initial(self, n, rng):
        return self.sample(n, rng, 0.0)

    def log_density_initial(self, x):
        return self.log_density(x, 0.0)

    def reference(self, t):
        t = float(t)
        cov = barenblatt_covariance(self.t0 + t, self.dim, self.m)
        return Reference(
            t=t, sample=lambda n, rng: self.sample(n, rng, t),
            log_density=lambda x: self.log_density(x, t),
            provenance=f"closed form: Barenblatt-Pattle profile at tau = t0 + t, t0 = {self.t0:g}",
            error_estimate=0.0, moments=(self.centre.copy(), cov))

    def has_closed_form(self) -> bool:
        return True
