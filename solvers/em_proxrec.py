"""Proximal recursion (Caluya & Halder, 2019): Euler–Maruyama particles with JKO weights.

Each step of size h moves the particles by one Euler–Maruyama step,
x^k = x^{k−1} − ∇Φ(x^{k−1}) h + sqrt(2h/β) ξ, and updates the density values
ρ^k at the new particles by the entropy-regularised JKO step between the
discrete measures (x^{k−1}, ρ^{k−1}) and (x^k, ρ^k):

    Γ = exp(−C/(2ε)),  C_ij = ‖x_i^{k−1} − x_j^k‖²,  ξ = exp(−βΦ(x^k) − 1),
    z ← (ξ / Γᵀy)^{1/(1 + βε/h)},  y ← ρ^{k−1} / (Γz),  ρ^k = z ⊙ Γᵀy,

iterated until the largest change of log y and log z is below ``tol`` or
``max_iter`` iterations. The fixed point keeps Σρ^k = Σρ^{k−1} and for
h → ∞ gives ρ^k = ξ, so the weights relax to ∝ exp(−βΦ) at the particles.

Numerics: everything is in the log domain (log Γ = −C/(2ε) is never
exponentiated as a whole), so nothing underflows when D grows. Each half
iteration is a log-sum-exp, evaluated as a matrix–vector product with a
kernel stabilised by the current log scalings (Schmitzer's absorption);
the kernel is rebuilt whenever a scaling drifts by more than
``ABSORB_THRESHOLD`` from the absorbed one.

Departures from the original code (on purpose):

- ξ uses Φ at the *new* particles x^k, where ρ^k lives (the first-order
  condition of the step); the original used Φ(x^{k−1}).
- The stopping rule compares log-domain (relative) changes; the original's
  absolute change of y and z in the linear domain is met at once when the
  values are tiny (high D).
- The initial z = exp(hλ/ε), λ ~ N(0, 1), is drawn from the solver's seeded
  generator at every step as in the original (``warm_start=False``) or only at
  the first step, later steps restarting from the previous fixed point
  (``warm_start=True``, same fixed point, fewer iterations).

Density at arbitrary points (how it is normalised): the weights ρ_i are
density values at points that are themselves (approximately) distributed as
ρ_t, so dρ_t/d(law of the particles) at x_i is estimated by w_i = ρ_i / p̂(x_i)
with p̂ the Gaussian KDE (Scott's rule) of the particles. The returned law is
the Gaussian mixture Σ_i π_i N(x_i, H), π = w/Σw, H = Scott bandwidth of the
π-weighted particles (n_eff = 1/Σπ²). It is normalised exactly by
construction — no constant is estimated and the reference is never used —
and it can be sampled exactly. Its bias is that of a KDE: the kernel adds
H to the covariance (larger as D grows, since the Scott factor is
n_eff^{−1/(D+4)}), and π inherits p̂'s smoothing error. The original instead
divided ρ by mean(ρ/KDE(x)) evaluated at the particles, which is a biased
normaliser (its KL(fitted‖true) came out negative).

``samples`` are the particles resampled by π (systematic resampling), i.e.
the solver's law without kernel smoothing; ``draw`` gives fresh mixture
samples with their exact mixture log-density.

Cost: O(N²·D) per step and memory O(N²); t = 1 is 1000 steps. Measured on
one CPU thread (OU, t = 0.9 = 900 steps): N = 400 5–15 s a run, N = 1000
30–70 s; N = 10000 (the original's largest, opt-in with
``-P em_proxrec.n_particles=10000``) ≈ 10 s a step, 4.3 GB peak — hours a
run on a CPU, hence not in the default grid; the torch code runs on CUDA
(``--device cuda``), untested here for want of a GPU. Fixed-point
iterations per step: 3–4 at D = 1, 3–5 at D = 12 (tol 1e-5, warm start).

Accuracy (OU, seed 0, t = 0.9, N = 1000): SymKL 0.018 / 0.053 / 0.27 /
0.91 / 1.69 / 3.56 at D = 1 / 2 / 3 / 6 / 9 / 12 (N = 400: 0.025 … 4.48);
its energy distance stays ≤ 0.03 (the particles are plain EM particles).

Where it breaks down: as D grows the cost C_ij between distinct particles dwarfs 2ε,
Γ becomes (numerically) diagonal and the fixed point returns ρ^k = ρ^{k−1}:
the weights freeze at ρ0(x_i^0) and stop carrying information about ρ_t
(``info["weight_memory"]``, the correlation of final and initial log
weights, goes to 1). Measured on OU, N = 400, t = 0.5: corr(final log
weights, true log ρ_t) = 0.98 / 0.94 / 0.56 / 0.25 at D = 1 / 2 / 6 / 12,
weight memory 0.35 / 0.30 / 0.72 / 0.998.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy.stats import gaussian_kde

from numerics.kde import kde_logpdf
from solvers.base import (GPU, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)

#: a log scaling may drift this far from the absorbed one before the kernel is rebuilt
ABSORB_THRESHOLD = 30.0


# --- the proximal step (torch, float64, CPU or CUDA) --------------------------------
class _StabilisedKernel:
    """exp(logK + shift) for one side, with the shift absorbed for stability.

    Evaluates ``lse(v)[r] = log Σ_c exp(logK[r, c] + v[c])`` for vectors ``v``
    close to the absorbed ``v0`` through one matrix–vector product.

    Parameters
    ----------
    log_kernel : torch.Tensor (R, C)
        log Γ arranged with the summed index last.
    v0 : torch.Tensor (C,)
        Log scaling absorbed into the kernel.
    """

    def __init__(self, log_kernel, v0):
        import torch

        self.log_kernel = log_kernel
        self.v0 = v0.clone()
        shifted = log_kernel + v0[None, :]
        self.row_max = shifted.max(dim=1).values  # (R,)
        self.kernel = torch.exp(shifted - self.row_max[:, None])  # entries in [0, 1]

    def lse(self, v):
        """``log Σ_c exp(logK[r, c] + v[c])`` for each row ``r`` -> (R,)."""
        import torch

        delta = v - self.v0
        top = delta.max()
        return self.row_max + top + torch.log(self.kernel @ torch.exp(delta - top))

    def needs_rebuild(self, v) -> bool:
        """Whether ``v`` drifted too far from the absorbed scaling."""
        return bool((v - self.v0).abs().max() > ABSORB_THRESHOLD)


def proximal_step(log_rho_prev, x_prev, x_new, log_xi, log_z0, *, h: float, eps: float,
                  beta: float, tol: float, max_iter: int):
    """One entropic JKO step between weighted point clouds, in the log domain.

    Parameters
    ----------
    log_rho_prev : torch.Tensor (N,)
        log ρ^{k−1} at ``x_prev``.
    x_prev, x_new : torch.Tensor (N, D)
        Particles before and after the Euler–Maruyama move.
    log_xi : torch.Tensor (N,)
        −βΦ(x_new) − 1.
    log_z0 : torch.Tensor (N,)
        Initial log z.
    h, eps, beta : float
        Step, entropic regularisation ε, inverse temperature.
    tol : float
        Stop when max |Δ log y| and max |Δ log z| are both below ``tol``.
    max_iter : int
        Iteration cap.

    Returns
    -------
    log_rho : torch.Tensor (N,)
        log ρ^k at ``x_new``.
    log_z : torch.Tensor (N,)
        Final log z (for warm starts).
    n_iter : int
        Iterations done.
    converged : bool
        Whether the tolerance was met.
    """
    import torch

    log_gamma = -torch.cdist(x_prev, x_new).square_() / (2.0 * eps)  # (N_prev, N_new)
    power = 1.0 / (1.0 + beta * eps / h)
    log_z = log_z0.to(log_rho_prev)
    rows = _StabilisedKernel(log_gamma, log_z)  # log Γz, summed over new points
    log_y = log_rho_prev - rows.lse(log_z)
    cols = _StabilisedKernel(log_gamma.T, log_y)  # log Γᵀy, summed over previous points
    converged, n_iter = False, 0
    for n_iter in range(1, max_iter + 1):
        if cols.needs_rebuild(log_y):
            cols = _StabilisedKernel(log_gamma.T, log_y)
        log_z_new = power * (log_xi - cols.lse(log_y))
        if rows.needs_rebuild(log_z_new):
            rows = _StabilisedKernel(log_gamma, log_z_new)
        log_y_new = log_rho_prev - rows.lse(log_z_new)
        change = max(float((log_z_new - log_z).abs().max()),
                     float((log_y_new - log_y).abs().max()))
        log_y, log_z = log_y_new, log_z_new
        if not np.isfinite(change):
            raise FloatingPointError("proximal recursion produced non-finite scalings")
        if change < tol:
            converged = True
            break
    if cols.needs_rebuild(log_y):
        cols = _StabilisedKernel(log_gamma.T, log_y)
    return log_z + cols.lse(log_y), log_z, n_iter, converged


def weight_memory(log_rho: np.ndarray, log_rho0: np.ndarray) -> float:
    """Correlation of each particle's log weight with its initial one.

    Near 1 means the weights froze at ρ0(x_i^0) (Γ numerically diagonal, the
    high-D breakdown); NaN when either vector is constant.
    """
    if np.std(log_rho) == 0 or np.std(log_rho0) == 0:
        return float("nan")
    return float(np.corrcoef(log_rho, log_rho0)[0, 1])


# --- density from the weights ---------------------------------------------------------
def mixture_weights(x: np.ndarray, log_rho: np.ndarray) -> np.ndarray:
    """Normalised mixture weights π ∝ ρ_i / p̂(x_i) (p̂: Scott KDE of the particles).

    Parameters
    ----------
    x : ndarray (N, D)
        Particles.
    log_rho : ndarray (N,)
        Unnormalised log density values at the particles.

    Returns
    -------
    ndarray (N,)
        Weights summing to one.
    """
    log_p_hat = kde_logpdf(gaussian_kde(x.T, bw_method="scott"), x)
    log_w = log_rho - log_p_hat
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def systematic_resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices ``(n,)`` of a systematic resampling of normalised ``weights``."""
    positions = (rng.random() + np.arange(n)) / n
    cdf = np.cumsum(weights)
    cdf[-1] = 1.0
    return np.searchsorted(cdf, positions, side="right").clip(max=len(weights) - 1)


def weighted_particle_law(x: np.ndarray, log_rho: np.ndarray, rng: np.random.Generator,
                          info: dict[str, Any]) -> SolverResult:
    """The solver's output at one time from particles and their log weights."""
    pi = mixture_weights(x, log_rho)
    kde = gaussian_kde(x.T, bw_method="scott", weights=pi)

    def log_density(points):
        return kde_logpdf(kde, points)

    def draw(n, gen):
        points = kde.resample(n, seed=gen).T
        return points, log_density(points)

    samples = x[systematic_resample(pi, x.shape[0], rng)]
    info = {**info, "n_eff": float(1.0 / np.sum(pi ** 2)), "kde_factor": float(kde.factor)}
    return SolverResult(samples=samples, log_density=log_density, draw=draw, info=info,
                        law=IID_DENSITY)


#: largest dimension run: beyond it the weights carry no information (module docstring)
MAX_DIM = 12


# --- the solver ---------------------------------------------------------------------
class ProximalRecursion(Solver):
    name = "em_proxrec"
    version = "1"
    # N = 10000 (the original's largest) is opt-in: O(N²) per step, see the module docstring
    parameters = {"n_particles": [400, 1000], "dt": [1e-3], "epsilon": [0.05],
                  "tol": [1e-5], "max_iter": [300], "warm_start": [True]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY, GPU})
    labels = {"n_particles": "N"}
    description = ("proximal recursion (Caluya & Halder): EM particles with entropic-JKO "
                   "weights, log domain; density = weighted KDE normalised by construction")

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "dt", "epsilon", "tol", "max_iter")
        if int(params["n_particles"]) != params["n_particles"] or params["n_particles"] < 2:
            raise ValueError(f"solver {cls.name!r}: n_particles must be an integer >= 2, "
                             f"got {params['n_particles']!r}")
        if int(params["max_iter"]) != params["max_iter"]:
            raise ValueError(f"solver {cls.name!r}: max_iter must be an integer, "
                             f"got {params['max_iter']!r}")
        if not isinstance(params["warm_start"], (bool, np.bool_)):
            raise ValueError(f"solver {cls.name!r}: warm_start must be true or false, "
                             f"got {params['warm_start']!r}")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, "em_proxrec does not assimilate observations"
        if task.dim > MAX_DIM:
            return True, (f"em_proxrec above D = {MAX_DIM}: the kernel exp(-C/2eps) is "
                          "numerically diagonal there, so the weights freeze at rho0 (measured "
                          "correlation with the true log-density 0.25 at D = 12) and each step "
                          "still costs O(N^2 D)")
        return False, ""

    def setup(self, task, times, seed, context):
        import torch

        self.task, self.times = task, sorted(times)
        self.steps = steps_to_times(self.times, float(self.params["dt"]))
        self.rng = np.random.default_rng(seed)
        self.device = torch.device(context.device)
        self.x0 = task.sample_initial(int(self.params["n_particles"]), self.rng)
        self.log_rho0 = np.asarray(task.log_density_initial(self.x0), dtype=np.float64)
        self.progress = context.progress

    def _initial_log_z(self, n: int):
        """log z = hλ/ε with λ ~ N(0, 1) from the solver's generator (as the original)."""
        import torch

        h, eps = float(self.params["dt"]), float(self.params["epsilon"])
        return torch.as_tensor(h * self.rng.standard_normal(n) / eps, device=self.device)

    def run(self):
        import torch

        h, beta = float(self.params["dt"]), float(self.task.beta)
        noise = np.sqrt(2.0 * h / beta)
        def to_torch(a):
            return torch.as_tensor(a, dtype=torch.float64, device=self.device)

        x = self.x0.copy()
        log_rho = to_torch(self.log_rho0)
        log_z = None
        iters, unconverged, results, k = [], 0, {}, 0
        for t, target in zip(self.times, self.steps):
            while k < target:
                x_new = x - self.task.grad_potential(x) * h \
                    + noise * self.rng.standard_normal(x.shape)
                log_xi = to_torch(-beta * self.task.potential(x_new) - 1.0)
                if log_z is None or not self.params["warm_start"]:
                    log_z = self._initial_log_z(x.shape[0])
                log_rho, log_z, n_iter, converged = proximal_step(
                    log_rho, to_torch(x), to_torch(x_new), log_xi, log_z, h=h,
                    eps=float(self.params["epsilon"]), beta=beta, tol=float(self.params["tol"]),
                    max_iter=int(self.params["max_iter"]))
                x = x_new
                iters.append(n_iter)
                unconverged += not converged
                k += 1
                if k % 50 == 0:
                    self.progress(k, self.steps[-1], "proximal recursion step")
            log_rho_np = log_rho.cpu().numpy().copy()
            info = {"steps": k, "mean_iterations": float(np.mean(iters)) if iters else 0.0,
                    "max_iterations": int(max(iters)) if iters else 0,
                    "unconverged_steps": int(unconverged),
                    "weight_memory": weight_memory(log_rho_np, self.log_rho0)}
            results[t] = weighted_particle_law(x.copy(), log_rho_np, self.rng, info)
        return results
