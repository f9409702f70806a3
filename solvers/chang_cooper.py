"""The Chang–Cooper (1970) finite-difference solver for 1-D Fokker–Planck equations.

The scheme (face fluxes with the exponential-fitting weight δ, implicit Euler,
zero-flux walls, mass conserved to round-off) is :mod:`numerics.chang_cooper`;
see its docstring. Differences from the original study: δ without the 0/0 of
the equilibrium-ratio form, no per-step renormalisation (which hid mass loss),
face drift from potential differences (exact discrete Gibbs state).

Output: the grid density ρ is turned into a law through its piecewise-linear
interpolant, normalised by the trapezoid rule so it integrates to one on
[−L, L]; outside [−L, L] the law has no mass and ``log_density`` returns
``LOG_ZERO`` (log 1e-300). Samples are exact draws of that interpolant by
inverse CDF.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from numerics.chang_cooper import grid_law, solve_on_grid
from solvers.base import (FILTERING, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)

#: samples returned in a SolverResult
N_SAMPLES = 8192


def grid_result(grid: np.ndarray, density: np.ndarray, rng: np.random.Generator,
                n_samples: int = N_SAMPLES, info: Mapping | None = None) -> SolverResult:
    """A :class:`SolverResult` (samples, log-density, draw) from a grid density."""
    log_density, sample = grid_law(grid, density)

    def draw(n: int, rng: np.random.Generator):
        x = sample(n, rng)
        return x, log_density(x)

    return SolverResult(samples=sample(n_samples, rng), log_density=log_density, draw=draw,
                        law=IID_DENSITY, info=dict(info or {}))


# --- the solver -------------------------------------------------------------------
class ChangCooper(Solver):
    """Chang–Cooper finite differences on [−L, L] (1-D tasks; filtering by Bayes updates)."""

    name = "chang_cooper"
    version = "1"
    parameters = {"n_grid": [2000, 500], "half_width": [10.0], "dt": [1e-3]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY, FILTERING})
    labels = {"n_grid": "grid"}
    description = "Chang-Cooper implicit finite differences, zero-flux walls (1-D only)"

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "n_grid", "half_width", "dt")
        if not isinstance(params["n_grid"], (int, np.integer)) or params["n_grid"] < 3:
            raise ValueError(f"solver {cls.name!r}: n_grid must be an integer >= 3, "
                             f"got {params['n_grid']!r}")

    def skip(self, task):
        if getattr(task, "dim", None) != 1:
            return True, f"chang_cooper is a 1-D grid scheme; task has dim={task.dim}"
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times, self.context = task, sorted(times), context
        self.rng = np.random.default_rng(seed)
        steps_to_times(self.times, float(self.params["dt"]))  # fail early on bad times

    def run(self):
        task, p = self.task, self.params
        updates = [(o.t, lambda x, y=o.y: task.observation_log_likelihood(x, y))
                   for o in getattr(task, "observations", ())]
        grid, densities = solve_on_grid(
            task.potential, task.beta, task.log_density_initial, float(p["half_width"]),
            int(p["n_grid"]), float(p["dt"]), self.times, updates,
            progress=lambda done, total: self.context.progress(done, total, "Chang-Cooper step"))
        dx = float(grid[1] - grid[0])
        return {t: grid_result(grid, rho, self.rng,
                               info={"mass": float(rho.sum() * dx), "min_density": float(rho.min()),
                                     "edge_density": float(max(rho[0], rho[-1]))})
                for t, rho in densities.items()}
