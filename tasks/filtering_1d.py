"""Nonlinear 1-D filtering (Frogner & Poggio 2020, §6.3; Mokrov et al. 2021, §4.5).

Signal dX = −Φ'(X)dt + √(2/β) dW with Φ(x) = sin(2πx)/π + x²/4, β = 1 and
X0 ~ N(0, 1). One hidden trajectory is simulated by Euler–Maruyama (Δt = 1e-3)
from the task seed alone, so every solver on the same (task, seed) sees the
same data; it is observed as Y_k = X_{t_k} + N(0, σ² = 1) at t_k = 0.5, 1.0,
…, 4.5. The target is the filtering law p(X_t | Y_k, t_k ≤ t), by default at
t = 5 (nine observations, then 0.5 s of pure prediction).

Reference: Chang–Cooper (numerics/chang_cooper.py, the core the solver also uses) on [−5, 5] with 2000
nodes and Δt = 1e-3, multiplied by the likelihood at each t_k and
renormalised on the grid. Its own error is measured, per task instance, as the
SymKL (trapezoid on the reference grid) between it and a run on a wider,
twice finer grid with half the time step ([−6, 6], Δx/2, Δt/2); that number
is ``Reference.error_estimate``. It is dominated by the zero-flux walls at ±5
(3e-7 to 2.5e-5 over task seeds 0–7); the grid and time-step errors alone are
below 1e-7. Both are far below the best solver's error (~4e-3). References are
cached per instance (about 1 s each, refinement included).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from numerics.chang_cooper import grid_law, solve_on_grid
from tasks.base import Observation, Reference, Task

#: observation times t_k
OBS_TIMES = tuple(round(0.5 * k, 10) for k in range(1, 10))
#: observation noise variance σ²
OBS_VARIANCE = 1.0
#: Euler–Maruyama step of the hidden trajectory
SIGNAL_DT = 1e-3
#: reference grid: [−REF_HALF_WIDTH, REF_HALF_WIDTH], REF_N_GRID nodes, REF_DT
REF_HALF_WIDTH, REF_N_GRID, REF_DT = 5.0, 2000, 1e-3
#: refinement used for the reference's error estimate
CHECK_HALF_WIDTH, CHECK_DT = 6.0, 5e-4


def potential_1d(x: np.ndarray) -> np.ndarray:
    """Φ(x) = sin(2πx)/π + x²/4 for ``x (n, 1)`` -> ``(n,)``."""
    x = np.asarray(x, dtype=np.float64)[:, 0]
    return np.sin(2.0 * np.pi * x) / np.pi + 0.25 * x * x


def grad_potential_1d(x: np.ndarray) -> np.ndarray:
    """Φ'(x) = 2cos(2πx) + x/2 for ``x (n, 1)`` -> ``(n, 1)``."""
    x = np.asarray(x, dtype=np.float64)
    return 2.0 * np.cos(2.0 * np.pi * x) + 0.5 * x


def simulate_signal(rng: np.random.Generator, t_end: float, dt: float, beta: float
                    ) -> np.ndarray:
    """One Euler–Maruyama path from X0 ~ N(0, 1); returns X at steps 0..K ``(K+1,)``."""
    n_steps = int(round(t_end / dt))
    x0 = rng.standard_normal()
    noise = np.sqrt(2.0 * dt / beta) * rng.standard_normal(n_steps)
    path = np.empty(n_steps + 1)
    path[0] = x0
    for k in range(n_steps):  # sequential by nature; 5000 scalar steps are cheap
        xk = path[k]
        path[k + 1] = xk - (2.0 * np.cos(2.0 * np.pi * xk) + 0.5 * xk) * dt + noise[k]
    return path


def grid_symkl(grid: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """SymKL of two grid densities by the trapezoid rule (as metrics.symkl.symkl_grid)."""
    tiny = 1e-300
    return float(np.trapezoid((p - q) * (np.log(p + tiny) - np.log(q + tiny)), grid))


class Filtering1D(Task):
    name = "filtering_1d"
    version = "1"
    parameters: dict = {}
    default_times = (5.0,)
    primary_metric = "symkl_grid"
    ranking_metrics = ("symkl_grid",)
    description = ("1-D nonlinear filtering: Φ = sin(2πx)/π + x²/4, 9 noisy observations, "
                   "target p(X_5 | Y_1:9); Chang-Cooper reference")

    def __init__(self, seed: np.random.SeedSequence) -> None:
        super().__init__(seed)
        self.dim = 1
        self.beta = 1.0
        self.obs_variance = OBS_VARIANCE
        rng = np.random.default_rng(seed)
        t_end = max(max(OBS_TIMES), max(self.default_times))
        self.signal = simulate_signal(rng, t_end, SIGNAL_DT, self.beta)
        steps = [int(round(t / SIGNAL_DT)) for t in OBS_TIMES]
        noise = np.sqrt(OBS_VARIANCE) * rng.standard_normal(len(OBS_TIMES))
        self.observations = tuple(
            Observation(t=t, y=np.array([self.signal[k] + e])) for t, k, e in
            zip(OBS_TIMES, steps, noise))
        self._reference = lru_cache(maxsize=None)(self._reference_uncached)

    # potential -----------------------------------------------------------------
    def potential(self, x):
        return potential_1d(x)

    def grad_potential(self, x):
        return grad_potential_1d(x)

    def potential_torch(self, x, batch=None):
        import torch

        return torch.sin(2.0 * torch.pi * x[:, 0]) / torch.pi + 0.25 * x[:, 0] ** 2

    def grad_potential_torch(self, x, batch=None):
        import torch

        return 2.0 * torch.cos(2.0 * torch.pi * x) + 0.5 * x

    # initial law and observations ------------------------------------------------
    def sample_initial(self, n, rng):
        return rng.standard_normal((n, 1))

    def log_density_initial(self, x):
        x = np.asarray(x, dtype=np.float64)[:, 0]
        return -0.5 * x * x - 0.5 * np.log(2.0 * np.pi)

    def observation_log_likelihood(self, x, y):
        """log N(y; x, σ²) for each row of ``x (n, 1)`` -> ``(n,)``."""
        x = np.asarray(x, dtype=np.float64)[:, 0]
        r = float(np.asarray(y).reshape(-1)[0]) - x
        return -0.5 * r * r / self.obs_variance - 0.5 * np.log(2.0 * np.pi * self.obs_variance)

    def hidden_state(self, t: float) -> float:
        """The simulated signal X_t (diagnostics only; never given to solvers)."""
        return float(self.signal[int(round(t / SIGNAL_DT))])

    # reference -------------------------------------------------------------------
    def filter_density(self, t: float, half_width: float, n_grid: int, dt: float
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Chang–Cooper filtering density at ``t`` on a given grid: (grid, density)."""
        updates = [(o.t, lambda x, y=o.y: self.observation_log_likelihood(x, y))
                   for o in self.observations]
        grid, out = solve_on_grid(self.potential, self.beta, self.log_density_initial,
                                  half_width, n_grid, dt, [t], updates)
        return grid, out[float(t)]

    def reference(self, t):
        return self._reference(float(t))

    def _reference_uncached(self, t: float) -> Reference:
        grid, rho = self.filter_density(t, REF_HALF_WIDTH, REF_N_GRID, REF_DT)
        log_density, sample = grid_law(grid, rho)
        density = np.exp(log_density(grid))  # the normalised interpolant at the nodes
        error = self._refinement_error(t, grid, density)
        provenance = (f"Chang-Cooper on [-{REF_HALF_WIDTH:g}, {REF_HALF_WIDTH:g}], "
                      f"{REF_N_GRID} nodes, dt={REF_DT:g}, Bayes update on the grid at each "
                      f"observation; error_estimate = grid SymKL to a run with dx/2, dt/2 "
                      f"on [-{CHECK_HALF_WIDTH:g}, {CHECK_HALF_WIDTH:g}]")
        return Reference(t=float(t), sample=sample, log_density=log_density,
                         provenance=provenance, error_estimate=error, grid=grid,
                         density=density, extras={"hidden_state": self.hidden_state(t)
                                                  if round(t / SIGNAL_DT) < len(self.signal)
                                                  else None})

    def _refinement_error(self, t: float, grid: np.ndarray, density: np.ndarray) -> float:
        """Grid SymKL between the reference and a finer, wider Chang–Cooper run."""
        dx = (grid[1] - grid[0]) / 2.0
        n_fine = int(round(2 * CHECK_HALF_WIDTH / dx)) + 1
        fine_grid, fine = self.filter_density(t, CHECK_HALF_WIDTH, n_fine, CHECK_DT)
        fine_log_density, _ = grid_law(fine_grid, fine)
        return grid_symkl(grid, np.exp(fine_log_density(grid)), density)
