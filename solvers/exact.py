"""The oracle: samples and density from a task's closed-form law.

It checks the metric path end to end (its SymKL must be ≈ 0 up to Monte Carlo
error) and gives every table a floor. Tasks opt in with ``has_closed_form()``.
"""
from __future__ import annotations

import numpy as np

from solvers.base import IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult
from tasks.free_energy import ALL_TERMS

N_SAMPLES = 8192


class Exact(Solver):
    name = "exact"
    version = "1"
    parameters = {"n_samples": [N_SAMPLES]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY})
    labels = {"n_samples": "n"}
    #: every free-energy term: the oracle only reads the task's closed-form law
    supports = ALL_TERMS
    description = "closed-form oracle (tasks with an exact marginal)"

    def skip(self, task):
        has = getattr(task, "has_closed_form", None)
        if has is None or not has():
            return True, f"task {task.name!r} has no closed-form law"
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times = task, list(times)
        self.rng = np.random.default_rng(seed)

    def run(self):
        results = {}
        for t in self.times:
            ref = self.task.reference(t)

            def draw(n, rng, ref=ref):
                x = ref.sample(n, rng)
                return x, ref.log_density(x)

            results[t] = SolverResult(samples=ref.sample(int(self.params["n_samples"]), self.rng),
                                      log_density=ref.log_density, draw=draw, law=IID_DENSITY)
        return results
