"""Closed forms of linear (Gaussian) Fokker–Planck flows, by eigendecomposition.

For dX = −K(X − ·) dt + √(2/β) dW with K symmetric positive definite, a
Gaussian law stays Gaussian and its covariance solves the Lyapunov ODE

    dΣ/dt = −KΣ − ΣK + (2/β) I,   Σ∞ = K⁻¹/β,   Σ_t = F(Σ0 − Σ∞)F + Σ∞,  F = e^{−Kt}

(KΣ∞ + Σ∞K = 2/β I, so Σ_t − Σ∞ solves the homogeneous equation). Every
matrix function here goes through K = V diag(λ) Vᵀ, so it is exact up to
rounding at any t and any D the tasks use (≤ 64).
"""
from __future__ import annotations

import numpy as np


def haar_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed orthogonal matrix ``(dim, dim)``: QR of a Gaussian matrix, signs fixed."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


def random_spd(dim: int, low: float, high: float, rng: np.random.Generator
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random SPD matrix with eigenvalues log-uniform in ``[low, high]``.

    The spectrum is bounded by construction (unlike ``make_spd_matrix``,
    whose largest eigenvalue grows with D): an explicit solver's stable step,
    2/λ_max, is the same at every D.

    Returns
    -------
    (matrix (dim, dim), eigenvalues (dim,) ascending, eigenvectors (dim, dim) as columns)
    """
    eigval = np.sort(np.exp(rng.uniform(np.log(low), np.log(high), size=dim)))
    eigvec = haar_rotation(dim, rng)
    matrix = (eigvec * eigval) @ eigvec.T
    return 0.5 * (matrix + matrix.T), eigval, eigvec


def spectral(eigval: np.ndarray, eigvec: np.ndarray, values: np.ndarray) -> np.ndarray:
    """V diag(values) Vᵀ ``(dim, dim)`` for a function's ``values`` at the eigenvalues."""
    out = (eigvec * values) @ eigvec.T
    return 0.5 * (out + out.T)


def ou_covariance(eigval: np.ndarray, eigvec: np.ndarray, cov0: np.ndarray, t: float,
                  beta: float) -> np.ndarray:
    """Σ_t of dΣ/dt = −KΣ − ΣK + (2/β) I from ``cov0`` ``(dim, dim)``, K = V diag(λ) Vᵀ."""
    F = spectral(eigval, eigvec, np.exp(-eigval * t))
    cov_inf = spectral(eigval, eigvec, 1.0 / (beta * eigval))
    cov = F @ (cov0 - cov_inf) @ F + cov_inf
    return 0.5 * (cov + cov.T)


def relax_mean(eigval: np.ndarray, eigvec: np.ndarray, mean0: np.ndarray, centre: np.ndarray,
               t: float) -> np.ndarray:
    """m_t of dm/dt = −K(m − centre): centre + e^{−Kt}(mean0 − centre), ``(dim,)``."""
    return centre + eigvec @ (np.exp(-eigval * t) * (eigvec.T @ (mean0 - centre)))
