"""Euler–Maruyama particles: the unadjusted Langevin discretisation.

X_{k+1} = X_k − ∇Φ(X_k) dt + sqrt(2 dt / β) ξ_k, all particles at once.
Returns particles only (no density): judge it with energy / sliced W2, or with
the KDE SymKL the original study used (biased in high dimension).
Tasks with data minibatches get an unbiased stochastic gradient each step.
"""
from __future__ import annotations

import numpy as np

from solvers.base import (PARTICLES, SAMPLES, Solver, SolverResult, require_positive,
                          steps_to_times)


class EulerMaruyama(Solver):
    name = "em"
    version = "1"
    parameters = {"n_particles": [1000, 10000, 50000], "dt": [1e-3], "batch_size": [0]}
    capabilities = frozenset({SAMPLES})
    labels = {"n_particles": "N", "batch_size": "batch"}
    description = "Euler-Maruyama particles (unadjusted Langevin)"

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "dt")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, "em does not assimilate observations (use bbf)"
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times = task, sorted(times)
        self.steps = steps_to_times(self.times, float(self.params["dt"]))
        self.rng = np.random.default_rng(seed)
        self.x0 = task.sample_initial(int(self.params["n_particles"]), self.rng)
        self.progress = context.progress

    def _grad(self, x):
        batch_size = int(self.params["batch_size"])
        if batch_size > 0:
            batch = self.task.data_batch(batch_size, self.rng)
            if batch is not None:
                import torch

                with torch.no_grad():
                    g = self.task.grad_potential_torch(torch.from_numpy(x), batch)
                return g.numpy()
        return self.task.grad_potential(x)

    def run(self):
        dt = float(self.params["dt"])
        noise = np.sqrt(2.0 * dt / self.task.beta)
        x = self.x0.copy()
        results, k = {}, 0
        total = self.steps[-1]
        for t, target in zip(self.times, self.steps):
            while k < target:
                x += -self._grad(x) * dt + noise * self.rng.standard_normal(x.shape)
                k += 1
                if k % 100 == 0:
                    self.progress(k, total, "EM step")
            results[t] = SolverResult(samples=x.copy(), law=PARTICLES)
        return results
