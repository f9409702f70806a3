"""Dual JKO (Frogner & Poggio, 2020): each JKO step as a smooth dual problem over a finite basis.

One JKO step of size h, written as min_ρ W2²(ν, ρ) + τF(ρ) with τ = 2h and
F(ρ) = ∫Φρ + β⁻¹∫ρ log ρ, has the dual (with the L2-regularised transport of
Blondel et al. relaxing g(x) + f(y) ≤ c(x, y) = ‖x − y‖²)

    max_{g, f}  E_ν[f(y)] − (τ/β) ∫ exp(−βg/τ − βΦ − 1) dx
                − (1/2γ) E_{x, y}[max(g(x) + f(y) − c(x, y), 0)²],

and the new density is ρ ∝ exp(−βg/τ − βΦ). Here g = Q_x α_g and f = Q_y α_f
over a finite basis — monomials up to ``degree`` (count capped at
``n_basis``) or Gaussian kernels exp(−‖x − c‖²/(2σ²)) on ``n_basis`` sample
centres — and the concave dual (minus ``ridge``/2·‖α‖², 0 as in the
original's default) is maximised by L-BFGS-B (``gtol``, ``max_iter``) from
α = 0. Expectations are Monte Carlo over ``n_samples`` points per side:

- E_ν uses y ~ ρ0 at the first step, later self-normalised importance
  weights ρ̃_{k−1}(y)/q(y) with y ~ q;
- the Lebesgue integral uses x ~ q with weights 1/q(x);
- the penalty's reference measure is q ⊗ q (pairs (x_i, y_i)).

The proposal q belongs to the solver: a Gaussian with the current density's
moments (estimated by importance sampling), its standard deviations scaled
by ``proposal_scale``. This replaces the original's fixed uniform boxes
(per-dimension variance 2–8), which miss the mass as D grows.

Support: a degree-3 g makes exp(−βg/τ) grow without bound in some direction,
and the dual is only fitted where q puts samples, so the solver's law is ρ̃
restricted to the ellipsoid B = {‖L⁻¹(x − m)‖ ≤ √D + ``support_width``} of the
last proposal q = N(m, LLᵀ) (q's own samples have radius ≈ √D); outside B
its log-density is −inf. B is fixed by the solver, never by the reference.

Normalisation (never with the reference, unlike the original's OU
evaluation, which divided by the TRUE marginal): in 1-D the trapezoid rule
on ``N_QUADRATURE`` points of B; in D > 1 importance sampling with
``n_normalise`` draws from q (unbiased for Z; log Z has O(1/n_eff) bias).
Samples: sampling–importance–resampling (SIR) from q, ``SIR_FACTOR`` proposals
per sample; ``draw`` does the same with fresh proposals (approximate draws
of ρ, exact normalised log-density values).

Filtering tasks: at each observation time the unnormalised density is
multiplied by exp(task.observation_log_likelihood(x, y)) (the Bayes update)
before the next JKO step or output.

Where it breaks down (OU, seed 0, t = 0.9, defaults, 1 CPU thread): the
dual is enforced only on n independent pairs of q ⊗ q, which are rarely
near the transport's diagonal as D grows, so its Monte Carlo error grows
with D and accumulates over steps (D = 6, degree 2: SymKL 1.00 with 10⁴
samples, 0.45 with 4·10⁴). Monomials of degree 3 — C(D+3, 3) terms, 455 at
D = 12 — overfit in the tails of q, where the fitted density then puts its
mass: SymKL 0.0011 / 0.038 / 0.14 / 0.61 / 2.26 at D = 1 / 2 / 3 / 6 / 7
and, from D = 8 on, fresh importance weights collapse (n_eff < D + 1) and
the run stops with an error. Degree 2 (``-P dual_jko.degree=2``, which
contains the exact OU potentials) runs to D = 12: 0.0008 / 0.033 / 0.50 /
1.98 / 4.12 at D = 1 / 2 / 6 / 9 / 12, under 4 s a run. The Gaussian basis
(σ² = 0.1, 500 kernels) is local and ill-conditioned — L-BFGS stops at
``max_iter`` at every step (~100 s a run): 0.012 / 0.37 / 2.0 at
D = 1 / 2 / 3 and weight collapse from D = 4. A step whose weights keep
fewer than D + 1 effective samples raises ``FloatingPointError``.
The same accumulation shows on a non-Gaussian transient (the tilted 2-D double
well of tests/test_generic_potentials.py, β = 2, t = 0.5, degree 3): left-well
mass 0.883 against 0.829 (ρ0: 0.996), 0.884 with 4× the samples, and worse with
more steps (0.903 / 0.922 at dt = 0.05 / 0.025); its densities there are finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any, Callable, Mapping

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp

from solvers.base import (FILTERING, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)

#: trapezoid points for the 1-D normaliser
N_QUADRATURE = 4001
#: proposals per SIR sample
SIR_FACTOR = 8
#: samples returned in a SolverResult
N_SAMPLES = 8192
#: largest exponent evaluated (keeps L-BFGS line searches finite)
MAX_EXPONENT = 600.0


# --- Gaussian proposal -----------------------------------------------------------
@dataclass(frozen=True)
class Gaussian:
    """N(mean, cov) given by its Cholesky factor; the solver's proposal."""

    mean: np.ndarray  # (D,)
    chol: np.ndarray  # (D, D) lower triangular

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``(n, D)`` draws."""
        return self.mean + rng.standard_normal((n, self.mean.shape[0])) @ self.chol.T

    def log_pdf(self, x: np.ndarray) -> np.ndarray:
        """Normalised log-density at ``x (n, D)`` -> ``(n,)``."""
        z = np.linalg.solve(self.chol, (x - self.mean).T)
        dim = self.mean.shape[0]
        return -0.5 * (np.sum(z * z, axis=0) + dim * np.log(2 * np.pi)) \
            - np.log(np.diag(self.chol)).sum()

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.sum(self.chol ** 2, axis=1))


def fit_gaussian(x: np.ndarray, weights: np.ndarray, scale: float) -> Gaussian:
    """Gaussian with the weighted moments of ``x``, standard deviations × ``scale``."""
    mean = weights @ x
    centred = x - mean
    cov = (centred * weights[:, None]).T @ centred
    cov = 0.5 * (cov + cov.T) + 1e-10 * np.trace(cov) / x.shape[1] * np.eye(x.shape[1])
    return Gaussian(mean=mean, chol=np.linalg.cholesky(scale ** 2 * cov))


def normalised_weights(log_w: np.ndarray) -> tuple[np.ndarray, float]:
    """Self-normalised weights from log weights and their effective sample size."""
    finite = np.isfinite(log_w)
    if not finite.any():
        raise FloatingPointError("all importance weights are zero")
    w = np.where(finite, np.exp(log_w - log_w[finite].max()), 0.0)
    w /= w.sum()
    return w, float(1.0 / np.sum(w ** 2))


# --- bases -----------------------------------------------------------------------
@dataclass(frozen=True)
class Basis:
    """Monomials of standardised coordinates, or Gaussian kernels on centres.

    Both span the same functions as in the original (polynomials are affine
    invariant; kernels are unscaled); standardising only conditions L-BFGS.
    """

    kind: str
    shift: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    terms: tuple = ()  # monomials: index tuples
    centres: np.ndarray | None = None  # kernels: (M, D)
    kernel_var: float = 0.1

    def features(self, x: np.ndarray) -> np.ndarray:
        """``(n, M)`` basis values at ``x (n, D)``."""
        if self.kind == "gaussian":
            sq = np.sum(x ** 2, 1)[:, None] + np.sum(self.centres ** 2, 1)[None, :] \
                - 2.0 * x @ self.centres.T
            return np.exp(-np.maximum(sq, 0.0) / (2.0 * self.kernel_var))
        u = (x - self.shift) / self.scale
        return np.stack([np.prod(u[:, list(t)], axis=1) if t else np.ones(len(u))
                         for t in self.terms], axis=1)


def monomial_terms(dim: int, degree: int, cap: int) -> tuple:
    """Index tuples of the monomials up to ``degree`` (constant first), at most ``cap``."""
    terms = [()]
    for d in range(1, degree + 1):
        terms.extend(combinations_with_replacement(range(dim), d))
    return tuple(terms[:cap])


def make_basis(kind: str, centres: np.ndarray, proposal: Gaussian, *, degree: int,
               n_basis: int, kernel_var: float) -> Basis:
    """A basis for one side of the dual, standardised by ``proposal``."""
    if kind == "poly":
        return Basis("poly", proposal.mean, proposal.std,
                     terms=monomial_terms(proposal.mean.shape[0], degree, n_basis))
    return Basis("gaussian", proposal.mean, proposal.std, centres=centres[:n_basis],
                 kernel_var=kernel_var)


# --- the dual problem ------------------------------------------------------------
@dataclass
class DualData:
    """Monte Carlo data of one JKO step's dual problem."""

    q_x: np.ndarray  # (n, Mg) basis of g at x ~ q
    q_y: np.ndarray  # (n, Mf) basis of f at y
    nu_weights: np.ndarray  # (n,) normalised weights of ν at y
    log_base: np.ndarray  # (n,) −βΦ(x) − 1 − log q(x)
    cost: np.ndarray  # (n,) ‖x_i − y_i‖²
    tau: float
    beta: float
    gamma: float
    ridge: float = 0.0


def negative_dual(alpha: np.ndarray, data: DualData) -> tuple[float, np.ndarray]:
    """Minus the regularised dual objective and its gradient in ``alpha = [α_g, α_f]``."""
    m_g = data.q_x.shape[1]
    g, f = data.q_x @ alpha[:m_g], data.q_y @ alpha[m_g:]
    n = g.shape[0]
    exponent = np.minimum(-(data.beta / data.tau) * g + data.log_base, MAX_EXPONENT)
    entropy = np.exp(exponent)  # integrand / q at x
    excess = np.maximum(g + f - data.cost, 0.0)
    value = -(data.nu_weights @ f) + (data.tau / data.beta) * entropy.mean() \
        + 0.5 / data.gamma * np.mean(excess ** 2)
    penalty_grad = excess / (data.gamma * n)
    grad = np.concatenate([data.q_x.T @ (-entropy / n + penalty_grad),
                           data.q_y.T @ (-data.nu_weights + penalty_grad)])
    if data.ridge > 0:
        value += 0.5 * data.ridge * float(alpha @ alpha)
        grad = grad + data.ridge * alpha
    return float(value), grad


def solve_dual(data: DualData, alpha0: np.ndarray, *, gtol: float, max_iter: int):
    """Maximise the dual with L-BFGS-B; returns (alpha, scipy result)."""
    res = minimize(negative_dual, alpha0, args=(data,), jac=True, method="L-BFGS-B",
                   options={"gtol": gtol, "maxiter": max_iter, "maxfun": 2 * max_iter})
    return res.x, res


# --- the density --------------------------------------------------------------------
@dataclass(frozen=True)
class JKODensity:
    """log ρ̃(x) = −(β/τ) g(x) − βΦ(x) + Σ observation log-likelihoods (unnormalised)."""

    potential: Callable[[np.ndarray], np.ndarray]
    beta: float
    tau: float = 1.0
    basis: Basis | None = None
    alpha: np.ndarray | None = None
    initial: Callable[[np.ndarray], np.ndarray] | None = None  # log ρ0 (step 0 only)
    likelihoods: tuple = ()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.initial is not None:
            out = np.asarray(self.initial(x), dtype=np.float64).copy()
        else:
            out = -(self.beta / self.tau) * (self.basis.features(x) @ self.alpha) \
                - self.beta * self.potential(x)
        for loglik in self.likelihoods:
            out = out + loglik(x)
        return out

    def updated(self, loglik: Callable[[np.ndarray], np.ndarray]) -> "JKODensity":
        """The Bayes update: the same density times exp(loglik)."""
        return JKODensity(self.potential, self.beta, self.tau, self.basis, self.alpha,
                          self.initial, self.likelihoods + (loglik,))


def support_radius(dim: int, width: float) -> float:
    """Mahalanobis radius of the support: √D (where q's samples lie) plus ``width``."""
    return float(np.sqrt(dim) + width)


def in_support(x: np.ndarray, proposal: Gaussian, width: float) -> np.ndarray:
    """Whether each row of ``x`` lies in the support ellipsoid of ``proposal``."""
    z = np.linalg.solve(proposal.chol, (x - proposal.mean).T)
    return np.sqrt(np.sum(z * z, axis=0)) <= support_radius(x.shape[1], width)


def log_normaliser(log_unnorm: Callable, proposal: Gaussian, width: float, n: int,
                   rng: np.random.Generator) -> tuple[float, float]:
    """log Z of ρ̃ on the support ellipsoid, and the effective sample size used.

    1-D: trapezoid rule on ``N_QUADRATURE`` points (n_eff reported as the
    point count). D > 1: importance sampling from ``proposal``.
    """
    if proposal.mean.shape[0] == 1:
        half = support_radius(1, width) * proposal.std[0]
        grid = np.linspace(proposal.mean[0] - half, proposal.mean[0] + half, N_QUADRATURE)
        log_vals = log_unnorm(grid[:, None])
        top = np.max(log_vals)
        return float(top + np.log(np.trapezoid(np.exp(log_vals - top), grid))), \
            float(N_QUADRATURE)
    x = proposal.sample(n, rng)
    log_w = np.where(in_support(x, proposal, width), log_unnorm(x) - proposal.log_pdf(x), -np.inf)
    _, n_eff = normalised_weights(log_w)
    return float(logsumexp(log_w) - np.log(n)), n_eff


def sir_draw(log_density: Callable, proposal: Gaussian, width: float, n: int,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` SIR draws (multinomial from SIR_FACTOR·n proposals) and their log-density."""
    x = proposal.sample(SIR_FACTOR * n, rng)
    log_p = log_density(x)
    w, _ = normalised_weights(log_p - proposal.log_pdf(x))
    pick = rng.choice(x.shape[0], size=n, p=w)
    return x[pick], log_p[pick]


def density_result(density: JKODensity, proposal: Gaussian, params: Mapping[str, Any],
                   rng: np.random.Generator, info: dict[str, Any]) -> SolverResult:
    """Normalised law of ``density`` on the support ellipsoid, with samples."""
    width = float(params["support_width"])
    log_z, n_eff_z = log_normaliser(density, proposal, width, int(params["n_normalise"]), rng)

    def log_density(x):
        x = np.atleast_2d(np.asarray(x, dtype=np.float64))
        return np.where(in_support(x, proposal, width), density(x) - log_z, -np.inf)

    def draw(n, gen):
        return sir_draw(log_density, proposal, width, n, gen)

    samples, _ = draw(N_SAMPLES, rng)
    return SolverResult(samples=samples, log_density=log_density, draw=draw, law=IID_DENSITY,
                        info={**info, "log_normaliser": log_z, "n_eff_normaliser": n_eff_z})


#: largest dimension run (see skip)
MAX_DIM = 12


# --- the solver ---------------------------------------------------------------------
class DualJKO(Solver):
    name = "dual_jko"
    version = "1"
    parameters = {"dt": [0.1], "basis": ["poly", "gaussian"], "degree": [3],
                  "n_basis": [500], "kernel_var": [0.1], "n_samples": [10000],
                  "gamma": [1e-2], "ridge": [0.0], "gtol": [1e-6], "max_iter": [1000],
                  "proposal_scale": [1.3], "support_width": [5.0], "n_normalise": [20000]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY, FILTERING})
    labels = {"degree": "deg"}
    description = ("dual JKO (Frogner & Poggio): regularised dual over a polynomial or Gaussian "
                   "basis by L-BFGS; normalised by quadrature (1-D) or importance sampling")

    @classmethod
    def validate_params(cls, params: Mapping[str, Any]) -> None:
        super().validate_params(params)
        require_positive(cls.name, params, "dt", "degree", "n_basis", "kernel_var", "n_samples",
                         "gamma", "gtol", "max_iter", "proposal_scale", "support_width",
                         "n_normalise")
        if params["basis"] not in ("poly", "gaussian"):
            raise ValueError(f"solver {cls.name!r}: basis must be 'poly' or 'gaussian', "
                             f"got {params['basis']!r}")
        if not isinstance(params["ridge"], (int, float)) or params["ridge"] < 0:
            raise ValueError(f"solver {cls.name!r}: ridge must be a number >= 0, "
                             f"got {params['ridge']!r}")
        for key in ("degree", "n_basis", "n_samples", "max_iter", "n_normalise"):
            if int(params[key]) != params[key]:
                raise ValueError(f"solver {cls.name!r}: {key} must be an integer, "
                                 f"got {params[key]!r}")
        if params["n_samples"] < params["n_basis"] and params["basis"] == "gaussian":
            raise ValueError(f"solver {cls.name!r}: n_samples must be >= n_basis for "
                             f"Gaussian kernels centred on samples")

    def skip(self, task):
        if task.dim > MAX_DIM:
            return True, (f"dual_jko above D = {MAX_DIM}: its dual is enforced on independent "
                          "pairs that rarely meet the transport's diagonal, and the normaliser's "
                          "importance weights collapse (degree 3 from D = 7; degree 2 reaches "
                          "SymKL 4 at D = 12), while the monomial basis grows as C(D + deg, deg)")
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times = task, sorted(times)
        self.dt = float(self.params["dt"])
        self.steps = steps_to_times(self.times, self.dt)
        self.obs_steps = {}
        for obs, k in zip(task.observations,
                          steps_to_times([o.t for o in task.observations], self.dt)):
            if k == 0:
                raise ValueError("dual_jko: an observation at t = 0 is not supported")
            self.obs_steps.setdefault(k, []).append(obs)
        self.rng = np.random.default_rng(seed)
        self.progress = context.progress

    def _likelihood(self, obs) -> Callable[[np.ndarray], np.ndarray]:
        return lambda x, y=obs.y: np.asarray(self.task.observation_log_likelihood(x, y),
                                             dtype=np.float64)

    def _step(self, density: JKODensity, y: np.ndarray, nu_weights: np.ndarray,
              proposal: Gaussian):
        """One JKO step from ν = (y, weights); returns the new density and diagnostics."""
        p, task, rng = self.params, self.task, self.rng
        n, tau, beta = int(p["n_samples"]), 2.0 * self.dt, float(task.beta)
        x = proposal.sample(n, rng)
        kw = dict(degree=int(p["degree"]), n_basis=int(p["n_basis"]),
                  kernel_var=float(p["kernel_var"]))
        basis_g = make_basis(p["basis"], x, proposal, **kw)
        basis_f = make_basis(p["basis"], y, proposal, **kw)
        data = DualData(q_x=basis_g.features(x), q_y=basis_f.features(y), nu_weights=nu_weights,
                        log_base=-beta * task.potential(x) - 1.0 - proposal.log_pdf(x),
                        cost=np.sum((x - y) ** 2, axis=1), tau=tau, beta=beta,
                        gamma=float(p["gamma"]), ridge=float(p["ridge"]))
        alpha0 = np.zeros(data.q_x.shape[1] + data.q_y.shape[1])
        alpha, res = solve_dual(data, alpha0, gtol=float(p["gtol"]), max_iter=int(p["max_iter"]))
        m_g = data.q_x.shape[1]
        new = JKODensity(task.potential, beta, tau, basis_g, alpha[:m_g].copy())
        diag = {"lbfgs_iterations": int(res.nit), "lbfgs_success": bool(res.success),
                "n_basis_used": int(m_g)}
        return new, x, diag

    def _moments(self, density: JKODensity, x: np.ndarray, proposal: Gaussian):
        """Self-normalised weights of ``density`` at ``x ~ proposal`` (on the support)."""
        width = float(self.params["support_width"])
        log_w = np.where(in_support(x, proposal, width), density(x) - proposal.log_pdf(x), -np.inf)
        weights, n_eff = normalised_weights(log_w)
        if n_eff < x.shape[1] + 1:
            raise FloatingPointError(f"importance weights degenerate (n_eff = {n_eff:.1f} < "
                                     f"D + 1 = {x.shape[1] + 1}): the proposal lost the density")
        return weights, n_eff

    def run(self):
        task, p = self.task, self.params
        n, scale = int(p["n_samples"]), float(p["proposal_scale"])
        density = JKODensity(task.potential, float(task.beta),
                             initial=task.log_density_initial)
        y = task.sample_initial(n, self.rng)  # ν = ρ0 sampled exactly at the first step
        nu_weights = np.full(n, 1.0 / n)
        proposal = fit_gaussian(y, nu_weights, scale)
        iters, n_effs, failures, results, k = [], [], 0, {}, 0
        for t, target in zip(self.times, self.steps):
            while k < target:
                density, x, diag = self._step(density, y, nu_weights, proposal)
                k += 1
                for obs in self.obs_steps.get(k, []):
                    density = density.updated(self._likelihood(obs))
                weights, n_eff = self._moments(density, x, proposal)
                iters.append(diag["lbfgs_iterations"])
                n_effs.append(n_eff)
                failures += not diag["lbfgs_success"]
                # the next ν: fresh draws from a proposal fitted to the new density
                proposal = fit_gaussian(x, weights, scale)
                y = proposal.sample(n, self.rng)
                nu_weights, _ = self._moments(density, y, proposal)
                self.progress(k, self.steps[-1], "dual JKO step")
            info = {"steps": k, "lbfgs_iterations_mean": float(np.mean(iters)) if iters else 0.0,
                    "lbfgs_not_converged": int(failures),
                    "n_eff_min": float(min(n_effs)) if n_effs else float(n),
                    "n_basis_used": diag["n_basis_used"] if iters else 0}
            results[t] = density_result(density, proposal, p, self.rng, info)
        return results
