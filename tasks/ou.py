"""Ornstein–Uhlenbeck process with closed-form Gaussian marginals.

Φ(x) = ½(x−b)ᵀA(x−b), A = S⁻¹ with S = ``make_spd_matrix(dim)`` and b ~ N(0, I),
both drawn from the task seed; β = 1; ρ0 = N(0, I). As in Mokrov et al. (2021).

The marginal is Gaussian: with F = exp(−At) and Σ∞ = A⁻¹/β,
  m_t = b + F(m0 − b),  Σ_t = F Σ0 F + Σ∞ − F Σ∞ F,
computed through the eigendecomposition A = V diag(λ) Vᵀ.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from sklearn.datasets import make_spd_matrix

from tasks.base import Reference, Task, gaussian_log_density, gaussian_sampler


class OrnsteinUhlenbeck(Task):
    name = "ou"
    version = "1"
    parameters = {"dim": list(range(1, 13))}
    default_times = tuple(round(0.1 * k, 10) for k in range(1, 11))
    description = "Ornstein-Uhlenbeck, random SPD drift, exact Gaussian marginals"

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2) -> None:
        super().__init__(seed, dim=dim)
        self.validate_params({"dim": dim})
        self.dim = int(dim)
        self.beta = 1.0
        rng = np.random.default_rng(seed)
        spd = make_spd_matrix(self.dim, random_state=int(rng.integers(2**31 - 1)))
        self.A = np.linalg.inv(spd)
        self.A = 0.5 * (self.A + self.A.T)
        self.b = rng.standard_normal(self.dim)
        self.eigval, self.eigvec = np.linalg.eigh(self.A)
        self.m0 = np.zeros(self.dim)
        self.cov0 = np.eye(self.dim)
        self._marginal = lru_cache(maxsize=None)(self._marginal_uncached)

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 1)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'ou': dim must be an integer >= 1, got {dim!r}")

    # potential ---------------------------------------------------------------
    def potential(self, x):
        z = np.asarray(x, dtype=np.float64) - self.b
        return 0.5 * np.einsum("ni,ij,nj->n", z, self.A, z)

    def grad_potential(self, x):
        return (np.asarray(x, dtype=np.float64) - self.b) @ self.A

    def potential_torch(self, x, batch=None):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        z = x - torch.as_tensor(self.b, dtype=x.dtype, device=x.device)
        return 0.5 * ((z @ A) * z).sum(dim=1)

    def grad_potential_torch(self, x, batch=None):
        import torch

        A = torch.as_tensor(self.A, dtype=x.dtype, device=x.device)
        return (x - torch.as_tensor(self.b, dtype=x.dtype, device=x.device)) @ A

    # initial law ----------------------------------------------------------
    def sample_initial(self, n, rng):
        return self.m0 + rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        return gaussian_log_density(x, self.m0, self.cov0)

    # closed form ------------------------------------------------------------
    def marginal(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(dim,)`` and covariance ``(dim, dim)`` of ρ_t."""
        return self._marginal(float(t))

    def _marginal_uncached(self, t: float):
        V, lam = self.eigvec, self.eigval
        F = (V * np.exp(-lam * t)) @ V.T
        cov_inf = (V / (self.beta * lam)) @ V.T
        mean = self.b + F @ (self.m0 - self.b)
        cov = F @ self.cov0 @ F + cov_inf - F @ cov_inf @ F
        return mean, 0.5 * (cov + cov.T)

    def reference(self, t):
        mean, cov = self.marginal(t)
        return Reference(
            t=float(t), sample=gaussian_sampler(mean, cov),
            log_density=lambda x: gaussian_log_density(x, mean, cov),
            provenance="closed form: Gaussian marginal of the OU process", error_estimate=0.0)

    def has_closed_form(self) -> bool:
        return True

    def quadratic_potential(self) -> tuple[np.ndarray, np.ndarray]:
        """(A ``(dim, dim)``, b ``(dim,)``) of Φ(x) = ½(x−b)ᵀA(x−b)."""
        return self.A.copy(), self.b.copy()

    def initial_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ``(dim,)``, covariance ``(dim, dim)``) of ρ0."""
        return self.m0.copy(), self.cov0.copy()
