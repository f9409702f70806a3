"""Euler–Maruyama particles: the unadjusted Langevin discretisation.

X_{k+1} = X_k − ∇Φ(X_k) dt + sqrt(2 dt / β) ξ_k, all particles at once.
Returns particles only (no density): judge it with energy / sliced W2, or with
the KDE SymKL the original study used (biased in high dimension).
Tasks with data minibatches get an unbiased stochastic gradient each step.

Free energies (tasks/free_energy.py). A time-dependent potential is
evaluated at the start of each step, ∇V(X_k, k dt) (explicit Euler in time
as in x). An interaction W adds the mean-field drift of the particle system
itself, (1/N) Σ_j ∇W(X_i − X_j) (the task's ``interaction_field``): the
classical interacting-particle approximation of the McKean–Vlasov law, whose
error is O(1/N) in the law on top of the O(dt) bias. By default that is the
pairwise sum, O(N²·D) per step in memory-bounded blocks; a task with an exact
shortcut supplies it (``aggregation``'s quadratic W: B(X_i − X̄), O(N·D²)),
because the pairwise sum is the whole cost of a run: measured on one thread at
D = 32, 0.37 s per step at N = 1000 and 0.92 s at N = 2000 (so about 40 s at
N = 10⁴), against 4e-4 s for the shortcut, which agrees with it to 1e-14
(tests/test_free_energy_tasks.py checks the two against each other). Whole
runs at N = 10⁴ on one thread of a loaded machine: aggregation D = 32 to t = 1
in 11 s, moving_trap D = 64 to t = 2 in 32 s. A porous-medium internal energy
needs the density, which particles do not have: em is skipped there.
On the tasks without these terms the step is the same arithmetic on the same
random stream as before (tests/test_free_energy_tasks.py pins the numbers).
"""
from __future__ import annotations

import numpy as np

from solvers.base import (PARTICLES, SAMPLES, Solver, SolverResult, require_positive,
                          steps_to_times)
from tasks.free_energy import (ENTROPY, INTERACTION, POTENTIAL, TIME_DEPENDENT,
                               free_energy_terms, skip_reason)


class EulerMaruyama(Solver):
    name = "em"
    version = "1"
    parameters = {"n_particles": [1000, 10000, 50000], "dt": [1e-3], "batch_size": [0]}
    capabilities = frozenset({SAMPLES})
    supports = frozenset({POTENTIAL, TIME_DEPENDENT, INTERACTION, ENTROPY})
    labels = {"n_particles": "N", "batch_size": "batch"}
    description = "Euler-Maruyama particles (unadjusted Langevin)"

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "dt")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, "em does not assimilate observations (use bbf)"
        reason = skip_reason(task, type(self))
        if reason:
            return True, reason
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times = task, sorted(times)
        self.steps = steps_to_times(self.times, float(self.params["dt"]))
        self.rng = np.random.default_rng(seed)
        self.x0 = task.sample_initial(int(self.params["n_particles"]), self.rng)
        self.progress = context.progress
        terms = free_energy_terms(task)
        self.time_dependent = TIME_DEPENDENT in terms
        self.interacting = INTERACTION in terms

    def _grad(self, x, t=0.0):
        if self.time_dependent:
            return self.task.grad_potential_t(x, t)
        batch_size = int(self.params["batch_size"])
        if batch_size > 0:
            batch = self.task.data_batch(batch_size, self.rng)
            if batch is not None:
                import torch

                with torch.no_grad():
                    g = self.task.grad_potential_torch(torch.from_numpy(x), batch)
                return g.numpy()
        return self.task.grad_potential(x)

    def _drift_grad(self, x, t):
        """∇V(x, t) plus, with an interaction, the particles' mean-field ∇W * μ_N ``(n, dim)``."""
        g = self._grad(x, t)
        if self.interacting:
            g = g + self.task.interaction_field(x, x)
        return g

    def run(self):
        dt = float(self.params["dt"])
        noise = np.sqrt(2.0 * dt / self.task.beta)
        x = self.x0.copy()
        results, k = {}, 0
        total = self.steps[-1]
        plain = not (self.time_dependent or self.interacting)
        for t, target in zip(self.times, self.steps):
            while k < target:
                # the plain path is the pre-free-energy expression, kept verbatim (bit-identical)
                g = self._grad(x) if plain else self._drift_grad(x, k * dt)
                x += -g * dt + noise * self.rng.standard_normal(x.shape)
                k += 1
                if k % 100 == 0:
                    self.progress(k, total, "EM step")
            results[t] = SolverResult(samples=x.copy(), law=PARTICLES)
        return results
