"""A harmonic trap whose centre moves on a circle: a time-dependent potential with a closed form.

V(x, t) = ½(x − b(t))ᵀA(x − b(t)),  b(t) = a(cos ωt, sin ωt, 0, …, 0)  (D = 1: a cos ωt),

β = 1, ρ0 = N(b(0), σ0² I). The circular motion of the centre in the first
two coordinates is the moving trap of Boffi & Vanden-Eijnden's SBTM paper
(nmboffi/sbtm, experiments/harmonic.py: radius a = 2, initial spread 0.25,
trap centre started at b(0)); here the trap is anisotropic (A a random SPD
matrix, so the two moving coordinates are coupled to the others) and the
angular speed is ω = π: a half turn per unit time.

The law stays Gaussian. With A = V diag(λ) Vᵀ and b(t) = Re(a e^{iωt} w),
w = e₁ − i e₂, the mean solves dm/dt = −A(m − b(t)); by variation of
constants, coordinate-wise in the eigenbasis (y = Vᵀm, ŵ = Vᵀw),

    y_k(t) = e^{−λ_k t} y_k(0) + λ_k Re[a ŵ_k (e^{iωt} − e^{−λ_k t}) / (λ_k + iω)],

and the covariance is the OU one, Σ_t = F(Σ0 − Σ∞)F + Σ∞, F = e^{−At},
Σ∞ = A⁻¹/β (numerics/linear_gaussian.py). The mean lags the centre by the
phase arctan(ω/λ_k) and shrinks by λ_k/|λ_k + iω| — a solver that evaluates
∇V at the wrong time, or ignores t, gets the mean wrong while the covariance
can still be right; hence ranking by energy distance, then SymKL (density
solvers) and ``mean_error`` (the term this task adds over ``ou``).

Instance (from the task seed): A has eigenvalues log-uniform in [0.5, 2]
(bounded at every D, so dt < 1 is stable for explicit steps at every D);
σ0 = 0.5 (the equilibrium spread is A⁻¹/β, 0.5 … 2 per axis). Sizes D = 1 … 64.
The free energy declares {"potential", "time_dependent", "entropy"}
(tasks/free_energy.py): a solver that only knows a fixed V is skipped;
``potential`` / ``grad_potential`` without a time are V(·, 0).

Reference checks that share no code with it (tests/test_free_energy_tasks.py):
the moment ODEs solved numerically (scipy ``solve_ivp``, rtol 1e-10) and
Euler–Maruyama particles with the time-dependent drift.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from numerics.linear_gaussian import ou_covariance, random_spd
from tasks.base import Reference, gaussian_log_density, gaussian_sampler
from tasks.free_energy import ENTROPY, POTENTIAL, TIME_DEPENDENT, FreeEnergy, FreeEnergyTask

#: range of A's eigenvalues
EIG_RANGE = (0.5, 2.0)
#: radius and angular speed of the centre's circle
RADIUS, OMEGA = 2.0, np.pi
#: standard deviation of ρ0 along every axis
INITIAL_STD = 0.5


def trap_centre(t: float, dim: int) -> np.ndarray:
    """b(t) ``(dim,)``: a(cos ωt, sin ωt) in the first two coordinates, 0 elsewhere."""
    b = np.zeros(dim)
    b[0] = RADIUS * np.cos(OMEGA * t)
    if dim > 1:
        b[1] = RADIUS * np.sin(OMEGA * t)
    return b


def centre_phasor(dim: int) -> np.ndarray:
    """w ``(dim,)`` complex with b(t) = Re(a e^{iωt} w): e₁ − i e₂ (D = 1: e₁)."""
    w = np.zeros(dim, dtype=np.complex128)
    w[0] = 1.0
    if dim > 1:
        w[1] = -1.0j
    return w


def trap_mean(eigval: np.ndarray, eigvec: np.ndarray, mean0: np.ndarray, t: float) -> np.ndarray:
    """m_t ``(dim,)`` of dm/dt = −A(m − b(t)) from ``mean0``, A = V diag(λ) Vᵀ.

    Variation of constants, coordinate-wise in the eigenbasis (module docstring).
    """
    w_hat = eigvec.T @ centre_phasor(mean0.shape[0])
    decay = np.exp(-eigval * t)
    forced = eigval * np.real(RADIUS * w_hat * (np.exp(1j * OMEGA * t) - decay)
                              / (eigval + 1j * OMEGA))
    return eigvec @ (decay * (eigvec.T @ mean0) + forced)


class MovingTrap(FreeEnergyTask):
    name = "moving_trap"
    version = "1"
    parameters = {"dim": [2, 16, 64]}
    default_times = (0.5, 1.0, 2.0)
    description = "harmonic trap with a centre moving on a circle, exact Gaussian marginals"
    primary_metric = "energy"
    ranking_metrics = ("energy", "symkl", "mean_error")
    bounds = {"dim": (1, 64)}

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2) -> None:
        super().__init__(seed, dim=dim)
        self.validate_params({"dim": dim})
        self.dim = int(dim)
        self.beta = 1.0
        self.free_energy = FreeEnergy(frozenset({POTENTIAL, TIME_DEPENDENT, ENTROPY}),
                                      beta=self.beta)
        rng = np.random.default_rng(seed)
        self.A, self.eigval, self.eigvec = random_spd(self.dim, *EIG_RANGE, rng)
        self.m0 = trap_centre(0.0, self.dim)
        self.cov0 = INITIAL_STD ** 2 * np.eye(self.dim)
        self._marginal = lru_cache(maxsize=None)(self._marginal_uncached)

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 1)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'moving_trap': dim must be an integer >= 1, got {dim!r}")

    def centre(self, t: float) -> np.ndarray:
        """The trap centre b(t) ``(dim,)``."""
        return trap_centre(float(t), self.dim)

    # V(x, t) ---------------------------------------------------------------------------
    def potential_t(self, x, t):
        z = np.asarray(x, dtype=np.float64) - self.centre(t)
        return 0.5 * np.einsum("ni,ij,nj->n", z, self.A, z)

    def grad_potential_t(self, x, t):
        return (np.asarray(x, dtype=np.float64) - self.centre(t)) @ self.A

    def potential_t_torch(self, x, t):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        z = x - torch.as_tensor(self.centre(t), dtype=x.dtype, device=x.device)
        return 0.5 * ((z @ A) * z).sum(dim=1)

    def grad_potential_t_torch(self, x, t):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        return (x - torch.as_tensor(self.centre(t), dtype=x.dtype, device=x.device)) @ A

    # the plain Task API: V at t = 0
    def potential(self, x):
        return self.potential_t(x, 0.0)

    def grad_potential(self, x):
        return self.grad_potential_t(x, 0.0)

    def potential_torch(self, x, batch=None):
        return self.potential_t_torch(x, 0.0)

    def grad_potential_torch(self, x, batch=None):
        return self.grad_potential_t_torch(x, 0.0)

    # initial law ----------------------------------------------------------------------
    def sample_initial(self, n, rng):
        return self.m0 + INITIAL_STD * rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        return gaussian_log_density(x, self.m0, self.cov0)

    # closed form -------------------------------------------------------------------------
    def marginal(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(dim,)`` and covariance ``(dim, dim)`` of ρ_t."""
        return self._marginal(float(t))

    def _marginal_uncached(self, t: float):
        mean = trap_mean(self.eigval, self.eigvec, self.m0, t)
        cov = ou_covariance(self.eigval, self.eigvec, self.cov0, t, self.beta)
        return mean, cov

    def reference(self, t):
        mean, cov = self.marginal(t)
        return Reference(
            t=float(t), sample=gaussian_sampler(mean, cov),
            log_density=lambda x: gaussian_log_density(x, mean, cov),
            provenance="closed form: Gaussian marginal of the moving-trap OU process "
                       "(variation of constants in A's eigenbasis)",
            error_estimate=0.0, moments=(mean, cov))

    def has_closed_form(self) -> bool:
        return True

    def initial_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ``(dim,)``, covariance ``(dim, dim)``) of ρ0."""
        return self.m0.copy(), self.cov0.copy()
