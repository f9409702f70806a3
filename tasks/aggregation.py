"""Aggregation–diffusion with quadratic V and W: a McKean–Vlasov flow with a closed form.

F(ρ) = ∫V dρ + ½∬W(x − y) dρ(x) dρ(y) + β⁻¹∫ρ log ρ,
V(x) = ½(x − c)ᵀA(x − c),  W(z) = ½zᵀBz  (attractive: B ≻ 0),  β = 1,

the law of the interacting particle limit dX = −∇V(X)dt − (∇W * ρ_t)(X)dt + √(2/β)dW.
Since ∇W * ρ(x) = B(x − m), a Gaussian ρ0 = N(m0, Σ0) stays Gaussian with

    dm/dt = −A(m − c)                     (the interaction cancels in the mean),
    dΣ/dt = −KΣ − ΣK + (2/β) I,  K = A + B  (it tightens the spread),

solved in closed form through the eigendecompositions of A and of K
(numerics/linear_gaussian.py). A and B do not commute (independent Haar
rotations), so the mean and the covariance relax along different axes.

Instance (from the task seed): A and B have eigenvalues log-uniform in
[0.5, 2] (bounded at every D: an explicit solver's stable step is the same
at every D, dt < 2/λ_max(K) ≥ 0.5), c ~ N(0, I), ρ0 = N(0, I). The mean
relaxes at rates 0.5 … 2 and is still moving at t = 1; the covariance
relaxes at rates 2λ(K) ≥ 2 towards K⁻¹/β, about half of the A⁻¹/β a solver
that drops W would reach — so the interaction shows in the covariance, and
a solver that ignores it scores a large ``cov_error`` while its mean is right.
Ranking: energy distance first (every solver has samples), then the
Monte Carlo SymKL (solvers with a density) and ``cov_error`` (the term this
task adds over ``ou``).

Sizes: D = 1 … 32 (``bounds``); the free energy declares
{"potential", "interaction", "entropy"} (tasks/free_energy.py), so solvers
that only know V and β are skipped.

Reference checks that share no code with it (tests/test_free_energy_tasks.py):
the moment ODEs solved numerically (scipy ``solve_ivp``) and a long
interacting-particle Euler–Maruyama simulation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from numerics.linear_gaussian import ou_covariance, random_spd, relax_mean
from tasks.base import Reference, gaussian_log_density, gaussian_sampler
from tasks.free_energy import ENTROPY, INTERACTION, POTENTIAL, FreeEnergy, FreeEnergyTask

#: range of the eigenvalues of A (confinement) and B (attraction)
EIG_RANGE = (0.5, 2.0)


class Aggregation(FreeEnergyTask):
    name = "aggregation"
    version = "1"
    parameters = {"dim": [2, 8, 32]}
    default_times = (0.25, 0.5, 1.0)
    description = "aggregation-diffusion, quadratic V and attractive W, exact Gaussian marginals"
    primary_metric = "energy"
    ranking_metrics = ("energy", "symkl", "cov_error")
    bounds = {"dim": (1, 32)}

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2) -> None:
        super().__init__(seed, dim=dim)
        self.validate_params({"dim": dim})
        self.dim = int(dim)
        self.beta = 1.0
        self.free_energy = FreeEnergy(frozenset({POTENTIAL, INTERACTION, ENTROPY}), beta=self.beta)
        rng = np.random.default_rng(seed)
        self.A, self.a_eigval, self.a_eigvec = random_spd(self.dim, *EIG_RANGE, rng)
        self.B, _, _ = random_spd(self.dim, *EIG_RANGE, rng)
        self.c = rng.standard_normal(self.dim)
        self.K = self.A + self.B
        self.k_eigval, self.k_eigvec = np.linalg.eigh(self.K)
        self.m0 = np.zeros(self.dim)
        self.cov0 = np.eye(self.dim)
        self._marginal = lru_cache(maxsize=None)(self._marginal_uncached)

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 1)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'aggregation': dim must be an integer >= 1, got {dim!r}")

    # V -------------------------------------------------------------------------------
    def potential(self, x):
        z = np.asarray(x, dtype=np.float64) - self.c
        return 0.5 * np.einsum("ni,ij,nj->n", z, self.A, z)

    def grad_potential(self, x):
        return (np.asarray(x, dtype=np.float64) - self.c) @ self.A

    def potential_torch(self, x, batch=None):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        z = x - torch.as_tensor(self.c, dtype=x.dtype, device=x.device)
        return 0.5 * ((z @ A) * z).sum(dim=1)

    def grad_potential_torch(self, x, batch=None):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        return (x - torch.as_tensor(self.c, dtype=x.dtype, device=x.device)) @ A

    # W -------------------------------------------------------------------------------
    def interaction(self, z):
        z = np.asarray(z, dtype=np.float64)
        return 0.5 * np.einsum("ni,ij,nj->n", z, self.B, z)

    def grad_interaction(self, z):
        return np.asarray(z, dtype=np.float64) @ self.B

    def interaction_torch(self, z):
        import torch

        B = torch.as_tensor(self.B, dtype=z.dtype, device=z.device)
        return 0.5 * ((z @ B) * z).sum(dim=1)

    def grad_interaction_torch(self, z):
        import torch

        return z @ torch.as_tensor(self.B, dtype=z.dtype, device=z.device)

    def interaction_field(self, x, y):
        """(∇W * μ)(x) = B(x − ȳ) exactly (∇W is linear): O(n + M) instead of the pairwise sum."""
        x = np.asarray(x, dtype=np.float64)
        return (x - np.asarray(y, dtype=np.float64).mean(axis=0)) @ self.B

    # initial law ----------------------------------------------------------------------
    def sample_initial(self, n, rng):
        return self.m0 + rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        return gaussian_log_density(x, self.m0, self.cov0)

    # closed form -------------------------------------------------------------------------
    def marginal(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(dim,)`` and covariance ``(dim, dim)`` of ρ_t."""
        return self._marginal(float(t))

    def _marginal_uncached(self, t: float):
        mean = relax_mean(self.a_eigval, self.a_eigvec, self.m0, self.c, t)
        cov = ou_covariance(self.k_eigval, self.k_eigvec, self.cov0, t, self.beta)
        return mean, cov

    def reference(self, t):
        mean, cov = self.marginal(t)
        return Reference(
            t=float(t), sample=gaussian_sampler(mean, cov),
            log_density=lambda x: gaussian_log_density(x, mean, cov),
            provenance="closed form: Gaussian McKean-Vlasov marginal (moment ODEs solved "
                       "by eigendecomposition)", error_estimate=0.0, moments=(mean, cov))

    def has_closed_form(self) -> bool:
        return True

    def initial_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ``(dim,)``, covariance ``(dim, dim)``) of ρ0."""
        return self.m0.copy(), self.cov0.copy()
