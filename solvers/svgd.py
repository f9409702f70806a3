"""Stein variational gradient descent (Liu & Wang, 2016).

Particles x_1..x_n move along
  φ(x_i) = (1/n) Σ_j [ k(x_j, x_i) ∇log ρ*(x_j) + ∇_{x_j} k(x_j, x_i) ],
with ∇log ρ* = −β∇Φ and the RBF kernel k(x, y) = exp(−‖x − y‖² / (2h²)),
h² = ½ · median(pairwise squared distances) / log(n + 1) (the original
code's median heuristic, recomputed every iteration). Steps follow the
original code: AdaGrad with momentum, G ← 0.9 G + 0.1 φ² (G = φ² at the
first step), x ← x + ε φ / (1e-6 + √G), ε = ``step_size``.

Gradients: for tasks with data minibatches (``task.data_batch``) each
iteration uses an unbiased minibatch estimate of ∇Φ of ``batch_size`` rows
(0 = full data), as the original BLR experiment (batch 100).

Time: SVGD targets the stationary law ρ* directly and has no physical time.
The evaluation times only label snapshots: the result at time t is the
particle set after round(n_iter · t / max(times)) iterations, so the last
time gets all ``n_iter`` iterations. On tasks whose reference is ρ_t at a
finite t (``ou``), SVGD's distance to ρ_t is therefore *not* a time-accuracy
measure; on ``stationary_gmm`` (reference ρ* at every t) and
``bayesian_logreg`` (posterior) it is the intended comparison.

Implementation: torch float64 (CPU or CUDA) — the tasks' torch gradients
accept index minibatches directly and the O(n²d) kernel algebra is a few
matrix products, so 100-particle runs are dominated by per-op overhead and
stay cheap on one CPU thread (run with one thread: small ops thrash with more).
Samples only: no density.
"""
from __future__ import annotations

import numpy as np

from solvers.base import GPU, PARTICLES, SAMPLES, Solver, SolverResult, require_positive

FUDGE = 1e-6
MOMENTUM = 0.9


def median_bandwidth_sq(sq_dists, n: int):
    """h² = ½ median(off-diagonal squared distances) / log(n + 1); 1 if degenerate.

    The median averages the two middle values for an even count (as numpy).
    """
    import torch

    iu = torch.triu_indices(n, n, offset=1, device=sq_dists.device)
    pairs = sq_dists[iu[0], iu[1]]
    m = pairs.numel()
    lo = torch.kthvalue(pairs, (m + 1) // 2).values
    hi = torch.kthvalue(pairs, m // 2 + 1).values
    h2 = 0.25 * (lo + hi) / np.log(n + 1.0)
    # all particles at one point: any positive bandwidth gives φ = mean score
    return torch.where(h2 > 0.0, h2, torch.ones_like(h2))


def stein_direction(x, score):
    """SVGD direction φ ``(n, d)`` for particles ``x (n, d)`` with scores ∇log ρ*(x).

    Returns
    -------
    phi : tensor (n, d)
    h2 : tensor ()
        The squared bandwidth used.
    """
    import torch

    n = x.shape[0]
    sq = torch.cdist(x, x).pow(2)
    h2 = median_bandwidth_sq(sq, n)
    k = torch.exp(-sq / (2.0 * h2))
    # Σ_j ∇_{x_j} k(x_j, x_i) = Σ_j k_ij (x_i − x_j) / h²  (k symmetric)
    repulsion = (x * k.sum(dim=1, keepdim=True) - k @ x) / h2
    return (k @ score + repulsion) / n, h2


def snapshot_iterations(times, n_iter: int) -> list[int]:
    """Iteration count labelled by each time: round(n_iter · t / max(times))."""
    t_max = max(times)
    return [int(round(n_iter * t / t_max)) for t in times]


class SVGD(Solver):
    name = "svgd"
    version = "1"
    parameters = {"n_particles": [100], "n_iter": [6000], "step_size": [0.05],
                  "batch_size": [100]}
    capabilities = frozenset({SAMPLES, GPU})
    labels = {"n_particles": "N", "n_iter": "iters", "batch_size": "batch"}
    description = "Stein variational gradient descent (RBF median kernel, AdaGrad momentum)"

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "n_iter", "step_size")
        for key in ("n_particles", "n_iter", "batch_size"):
            value = params[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"solver 'svgd': {key} must be an integer, got {value!r}")
        if params["n_particles"] < 2:
            raise ValueError("solver 'svgd': n_particles must be >= 2 (the kernel needs pairs)")
        if params["batch_size"] < 0:
            raise ValueError("solver 'svgd': batch_size must be >= 0 (0 = full data), "
                             f"got {params['batch_size']!r}")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, "svgd does not assimilate observations"
        if not getattr(task, "stationary", False):
            return True, ("svgd samples the stationary law; this task's reference is the law "
                          "at a finite time t, which SVGD does not follow")
        return False, ""

    def setup(self, task, times, seed, context):
        import torch

        self.task, self.times = task, sorted(times)
        self.iterations = snapshot_iterations(self.times, int(self.params["n_iter"]))
        self.rng = np.random.default_rng(seed)
        x0 = task.sample_initial(int(self.params["n_particles"]), self.rng)
        self.device = torch.device(context.device)
        self.x0 = torch.as_tensor(np.asarray(x0, dtype=np.float64), device=self.device)
        self.progress = context.progress

    def _score(self, x):
        """∇log ρ* = −β∇Φ, on a minibatch when the task has data."""
        batch_size = int(self.params["batch_size"])
        batch = self.task.data_batch(batch_size, self.rng) if batch_size > 0 else None
        return -self.task.beta * self.task.grad_potential_torch(x, batch)

    def run(self):
        import torch

        step = float(self.params["step_size"])
        x = self.x0.clone()
        hist = torch.zeros_like(x)
        results, k, h2 = {}, 0, float("nan")
        total = self.iterations[-1]
        with torch.no_grad():
            for t, target in zip(self.times, self.iterations):
                while k < target:
                    phi, h2_t = stein_direction(x, self._score(x))
                    hist = phi * phi if k == 0 else MOMENTUM * hist + (1.0 - MOMENTUM) * phi * phi
                    x = x + step * phi / (FUDGE + hist.sqrt())
                    k += 1
                    if k % 100 == 0:
                        h2 = float(h2_t)
                        self.progress(k, total, "SVGD iteration")
                results[t] = SolverResult(samples=x.detach().cpu().numpy().copy(), law=PARTICLES,
                                          info={"iterations": k, "bandwidth_sq": h2})
        return results
