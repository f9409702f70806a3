"""The JKO scheme solved exactly: the time-discretisation floor of every JKO solver.

For a quadratic potential Φ(x) = ½(x−b)ᵀA(x−b) and a Gaussian ρ0 every JKO
iterate is Gaussian, and one step ρ^(k) = argmin F(ρ) + W2²(ρ^(k−1), ρ)/(2h)
has a closed form. From N(m, Σ) the optimal map is y = m' + M(x − m) with M
symmetric positive definite, and the optimality condition
(y − x)/h = −A(y − b) + β⁻¹Σ'⁻¹(y − m'), Σ' = MΣM, gives

    m' = (I + hA)⁻¹(m + hAb),
    M K M − M = (h/β) Σ⁻¹,  K = I + hA,

solved through N = K^½ M K^½, which satisfies N² − N = (h/β) K^½ Σ⁻¹ K^½ =: C,
so N = ½I + (¼I + C)^½ and M = K^−½ N K^−½.

The result is what a JKO solver with step h would return with a perfect
optimiser: ICNN-JKO's SymKL minus this one is its network and sampling error
(on OU at h = 0.05 the floor is 1e-4..3e-3 at t = 0.9, D = 1..12). It applies to
tasks exposing ``quadratic_potential()`` and ``initial_gaussian()`` (``ou``).
"""
from __future__ import annotations

import numpy as np

from solvers.base import (IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)
from tasks.base import gaussian_log_density, gaussian_sampler


def _sym_power(matrix: np.ndarray, power: float) -> np.ndarray:
    """``matrix ** power`` for a symmetric positive definite matrix."""
    lam, vec = np.linalg.eigh(0.5 * (matrix + matrix.T))
    return (vec * lam ** power) @ vec.T


def gaussian_jko_step(mean: np.ndarray, cov: np.ndarray, a: np.ndarray, b: np.ndarray,
                      h: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """One exact JKO step from N(mean, cov) for Φ = ½(x−b)ᵀa(x−b) -> (mean', cov').

    Shapes: ``mean, b (D,)``, ``cov, a (D, D)``; float64.
    """
    dim = mean.shape[0]
    k = np.eye(dim) + h * a
    new_mean = np.linalg.solve(k, mean + h * a @ b)
    k_half, k_inv_half = _sym_power(k, 0.5), _sym_power(k, -0.5)
    c = (h / beta) * k_half @ np.linalg.inv(cov) @ k_half
    n = 0.5 * np.eye(dim) + _sym_power(0.25 * np.eye(dim) + c, 0.5)
    m = k_inv_half @ n @ k_inv_half
    new_cov = m @ cov @ m
    return new_mean, 0.5 * (new_cov + new_cov.T)


class GaussianJko(Solver):
    name = "gaussian_jko"
    version = "1"
    parameters = {"h": [0.05], "n_samples": [8192]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY})
    description = ("the JKO scheme solved exactly within Gaussians (quadratic potential, "
                   "Gaussian start): the time-step floor of JKO solvers")

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "h", "n_samples")

    def skip(self, task):
        if not (hasattr(task, "quadratic_potential") and hasattr(task, "initial_gaussian")):
            return True, f"task {task.name!r} has no quadratic potential with a Gaussian start"
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times = task, sorted(float(t) for t in times)
        self.steps = steps_to_times(self.times, float(self.params["h"]))
        self.rng = np.random.default_rng(seed)

    def run(self):
        a, b = self.task.quadratic_potential()
        mean, cov = self.task.initial_gaussian()
        h, beta = float(self.params["h"]), float(self.task.beta)
        results = {}
        for k in range(1, self.steps[-1] + 1):
            mean, cov = gaussian_jko_step(mean, cov, a, b, h, beta)
            if k in self.steps:
                results[self.times[self.steps.index(k)]] = self._result(mean, cov)
        return results

    def _result(self, mean: np.ndarray, cov: np.ndarray) -> SolverResult:
        sample = gaussian_sampler(mean, cov)

        def log_density(x):
            return gaussian_log_density(x, mean, cov)

        def draw(n, rng):
            x = sample(n, rng)
            return x, log_density(x)

        return SolverResult(samples=sample(int(self.params["n_samples"]), self.rng),
                            log_density=log_density, draw=draw, law=IID_DENSITY)
