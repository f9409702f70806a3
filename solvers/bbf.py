"""Bayesian bootstrap particle filter (Gordon, Salmond & Smith 1993).

N particles start from ρ0 and move by Euler–Maruyama,
X ← X − ∇Φ(X)Δt + √(2Δt/β)ξ. At each observation time the log-weights gain
the task's observation log-likelihood; the particles are then resampled when
the effective sample size ESS = 1/Σw² is at most ``ess_threshold``·N
(``ess_threshold = 1`` resamples at every observation, as Gordon et al. and
the original study did). Resampling is systematic by default (lower variance);
``multinomial`` is what the original study used; ``stratified`` is also there.

The density at an evaluation time is a Gaussian KDE of the weighted particles
(scipy ``gaussian_kde``, Scott's rule with the weights' effective size), as in
the original study; samples are the particles (resampled to equal weights by
the same scheme if the weights are not uniform), and ``draw`` gives fresh KDE
draws with their log-density.

Tasks without observations are skipped: there the filter is exactly the
``em`` solver, whose particles the ``symkl_kde`` metric already judges through
the same KDE, so a bbf row would duplicate an em row.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import gaussian_kde

from numerics.kde import kde_logpdf
from solvers.base import (FILTERING, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)

RESAMPLING_SCHEMES = ("systematic", "multinomial", "stratified")


# --- resampling ----------------------------------------------------------------------
def _inverse_cdf(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices i with cdf[i−1] ≤ u < cdf[i] for sorted or unsorted ``u`` in [0, 1)."""
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]  # round-off must not leave the last particle unreachable
    return np.minimum(np.searchsorted(cdf, u, side="right"), weights.size - 1)


def systematic_resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ancestor indices from one uniform shift of an evenly spaced comb.

    Each particle i gets ⌊n·w_i⌋ or ⌈n·w_i⌉ offspring (unbiased: E = n·w_i).
    """
    return _inverse_cdf(weights, (rng.random() + np.arange(n)) / n)


def stratified_resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` ancestor indices, one uniform draw in each stratum [k/n, (k+1)/n)."""
    return _inverse_cdf(weights, (rng.random(n) + np.arange(n)) / n)


def multinomial_resample(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` i.i.d. ancestor indices with probabilities ``weights``."""
    return _inverse_cdf(weights, rng.random(n))


def resample(weights: np.ndarray, n: int, rng: np.random.Generator,
             scheme: str = "systematic") -> np.ndarray:
    """Ancestor indices ``(n,)`` int64 by ``scheme`` (one of ``RESAMPLING_SCHEMES``)."""
    schemes = {"systematic": systematic_resample, "stratified": stratified_resample,
               "multinomial": multinomial_resample}
    if scheme not in schemes:
        raise ValueError(f"unknown resampling scheme {scheme!r}; known: {RESAMPLING_SCHEMES}")
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights must be a finite, non-negative 1-D array with positive sum")
    return schemes[scheme](w, int(n), rng)


def normalised_weights(log_weights: np.ndarray) -> np.ndarray:
    """exp(log w) / Σ exp(log w), computed stably."""
    return np.exp(log_weights - logsumexp(log_weights))


def effective_sample_size(weights: np.ndarray) -> float:
    """ESS = 1 / Σ w² for normalised weights."""
    return float(1.0 / np.sum(weights * weights))


# --- the solver --------------------------------------------------------------------
class BootstrapFilter(Solver):
    """Bootstrap particle filter with Euler–Maruyama propagation and a KDE density."""

    name = "bbf"
    version = "1"
    parameters = {"n_particles": [100, 1000, 10000, 50000], "dt": [1e-3],
                  "resampling": ["systematic"], "ess_threshold": [1.0]}
    capabilities = frozenset({SAMPLES, LOG_DENSITY, FILTERING})
    labels = {"n_particles": "N", "ess_threshold": "ESS"}
    description = ("bootstrap particle filter: Euler-Maruyama, likelihood weights, "
                   "resampling, Gaussian KDE (Scott)")

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "dt", "ess_threshold")
        n = params["n_particles"]
        if not isinstance(n, (int, np.integer)) or n < 2:
            raise ValueError(f"solver {cls.name!r}: n_particles must be an integer >= 2, "
                             f"got {n!r}")
        if params["resampling"] not in RESAMPLING_SCHEMES:
            raise ValueError(f"solver {cls.name!r}: resampling must be one of "
                             f"{RESAMPLING_SCHEMES}, got {params['resampling']!r}")
        if params["ess_threshold"] > 1:
            raise ValueError(f"solver {cls.name!r}: ess_threshold must be in (0, 1], "
                             f"got {params['ess_threshold']!r}")

    def skip(self, task):
        if not getattr(task, "observations", ()):
            return True, ("task has no observations: bbf would be the em solver "
                          "(em rows are judged by the same KDE through symkl_kde)")
        return False, ""

    def setup(self, task, times, seed, context):
        self.task, self.times, self.context = task, sorted(float(t) for t in times), context
        dt = float(self.params["dt"])
        self.eval_steps = steps_to_times(self.times, dt)
        obs = [o for o in task.observations]
        self.obs_steps = steps_to_times([o.t for o in obs], dt)
        self.observations = obs
        self.rng = np.random.default_rng(seed)
        self.x0 = task.sample_initial(int(self.params["n_particles"]), self.rng)

    def _propagate(self, x: np.ndarray, n_steps: int, done: int, total: int) -> np.ndarray:
        dt = float(self.params["dt"])
        noise = np.sqrt(2.0 * dt / self.task.beta)
        xi = np.empty_like(x)
        for k in range(n_steps):
            self.rng.standard_normal(out=xi)
            xi *= noise
            xi -= self.task.grad_potential(x) * dt
            x += xi
            if (done + k + 1) % 250 == 0:
                self.context.progress(done + k + 1, total, "bbf step")
        return x

    def run(self):
        p = self.params
        n = int(p["n_particles"])
        total = self.eval_steps[-1]
        # (step, kind, payload): observations before evaluations at the same step
        events = [(k, 0, o) for k, o in zip(self.obs_steps, self.observations) if k <= total]
        events += [(k, 1, t) for k, t in zip(self.eval_steps, self.times)]
        events.sort(key=lambda e: (e[0], e[1]))

        x, log_w = self.x0.copy(), np.zeros(n)
        step, ess_log, n_resampled, log_evidence = 0, [], 0, 0.0
        results = {}
        for k, kind, payload in events:
            x = self._propagate(x, k - step, step, total)
            step = k
            if kind == 0:
                log_lik = np.asarray(self.task.observation_log_likelihood(x, payload.y))
                # evidence increment log Σ w_prev·lik (w_prev normalised)
                log_evidence += float(logsumexp(log_w + log_lik) - logsumexp(log_w))
                log_w = log_w + log_lik
                w = normalised_weights(log_w)
                ess = effective_sample_size(w)
                ess_log.append(round(ess, 2))
                if ess <= float(p["ess_threshold"]) * n:
                    x = x[resample(w, n, self.rng, p["resampling"])]
                    log_w = np.zeros(n)
                    n_resampled += 1
            else:
                results[payload] = self._result(x, normalised_weights(log_w), {
                    "ess_at_observations": list(ess_log), "n_resampled": n_resampled,
                    "log_evidence": log_evidence})
        return results

    def _result(self, x: np.ndarray, w: np.ndarray, info: dict) -> SolverResult:
        """KDE log-density, equal-weight samples and KDE draws of weighted particles."""
        n = x.shape[0]
        uniform = np.ptp(w) <= 1e-12 / n
        kde = gaussian_kde(x.T, bw_method="scott", weights=None if uniform else w)
        samples = x.copy() if uniform else x[resample(w, n, self.rng, self.params["resampling"])]

        def log_density(y: np.ndarray) -> np.ndarray:
            return kde_logpdf(kde, y)

        def draw(m: int, rng: np.random.Generator):
            y = kde.resample(m, seed=rng).T
            return y, log_density(y)

        info = {**info, "final_ess": effective_sample_size(w), "bandwidth": float(kde.factor)}
        return SolverResult(samples=samples, log_density=log_density, draw=draw, info=info,
                            law=IID_DENSITY)
