"""Ornstein–Uhlenbeck process with closed-form Gaussian marginals.

Φ(x) = ½(x−b)ᵀA(x−b), A = S⁻¹ with S = ``make_spd_matrix(dim)`` and b ~ N(0, I),
both drawn from the task seed; β = 1; ρ0 = N(0, I). As in Mokrov et al. (2021).

The marginal is Gaussian: with F = exp(−At) and Σ∞ = A⁻¹/β,
  m_t = b + F(m0 − b),  Σ_t = F Σ0 F + Σ∞ − F Σ∞ F,
computed through the eigendecomposition A = V diag(λ) Vᵀ.

Sizes: D = 1 … 128 (``bounds``); the default grid is the study's 1 … 12. The
instance at each D is the same as at every earlier version of this task.
``make_spd_matrix`` (scikit-learn, as the study) adds an all-ones matrix
inside its SVD construction, so S has one eigenvalue of order D and A = S⁻¹
gets stiff as D grows. Range of A's eigenvalues over task seeds 0–4
(scikit-learn 1.9): D = 1: [0.51, 0.76]; 2: [0.38, 11.8]; 12: [0.08, 38];
16: [0.06, 42]; 32: [0.03, 82]; 64: [0.015, 146]; 128: [0.008, 683]. The
benchmark's own instances (seeds 0–2 of the default entropy) have λ_max up to
29 at D ≤ 10 but 181 at D = 11 (seed 2), 59 at D = 16, 130 at D = 32, 91 at
D = 64 and 198 at D = 128. The fastest mode sets the step an explicit method
needs (Euler–Maruyama is stable for dt < 2/λ_max: 3e-3 at D = 128, so the
default dt = 1e-3 holds everywhere; SCVM's RK4 raises its step count from an
estimate of λ_max); the slowest one is still far from stationary at t = 1.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from tasks.base import Reference, Task, gaussian_log_density, gaussian_sampler


class OrnsteinUhlenbeck(Task):
    name = "ou"
    version = "1"
    parameters = {"dim": list(range(1, 13))}
    default_times = tuple(round(0.1 * k, 10) for k in range(1, 11))
    description = "Ornstein-Uhlenbeck, random SPD drift, exact Gaussian marginals"
    ranking_metrics = ("energy", "symkl")
    bounds = {"dim": (1, 128)}

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2) -> None:
        super().__init__(seed, dim=dim)
        self.validate_params({"dim": dim})
        self.dim = int(dim)
        self.beta = 1.0
        from sklearn.datasets import make_spd_matrix  # heavy: imported when a task is built

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
            provenance="closed form: Gaussian marginal of the OU process", error_estimate=0.0,
            moments=(mean, cov))

    def has_closed_form(self) -> bool:
        return True

    def quadratic_potential(self) -> tuple[np.ndarray, np.ndarray]:
        """(A ``(dim, dim)``, b ``(dim,)``) of Φ(x) = ½(x−b)ᵀA(x−b)."""
        return self.A.copy(), self.b.copy()

    def initial_gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean ``(dim,)``, covariance ``(dim, dim)``) of ρ0."""
        return self.m0.copy(), self.cov0.copy()
