"""Posterior-predictive metrics for classification tasks (``bayesian_logreg``).

The predictive probability of label 1 at a test point z is the average
p(z) = Σ_s ω_s σ(w_sᵀz) over the solver's law: 4096 fresh draws (equal ω)
for an i.i.d. law, every particle with its weight for a particle set (the
set *is* the posterior the solver returns: 100 SVGD particles are judged as
100 particles). The weights w are the first ``n_weights`` coordinates of a
sample, or, for the task's non-centred state, those coordinates times
exp(−log α / 2) (``extras["state"]``). Test data come from
``reference.extras`` (``z_test`` with the intercept column, ``y_test`` in {0, 1}).

- ``test_accuracy``: mean of [p(z_i) > 1/2] == y_i (an exact tie counts as an error).
- ``test_loglik``: mean of log p(y_i | z_i), by log-sum-exp.

Both are higher-is-better. Standard error: for i.i.d. draws, the delete-a-
block jackknife over 16 blocks of posterior draws (the Monte Carlo error of
the predictive average); 0 for a particle set, whose predictive is computed
exactly. The test set's own sampling error (one split of a few hundred rows
moves accuracy by ~0.03) is not in it: it is the same for every solver on a
split, and the report pairs solvers on splits for that reason.
"""
from __future__ import annotations

import numpy as np

from metrics.base import Metric, MetricValue, solver_sample
from tasks.bayesian_logreg import weights_from_state

N_POSTERIOR = 4096
N_BLOCKS = 16
#: cap on samples x test points per block (memory bound)
BLOCK_ELEMENTS = 4_000_000


def block_log_probs(weights: np.ndarray, log_omega: np.ndarray, z: np.ndarray, y: np.ndarray,
                    n_blocks: int) -> np.ndarray:
    """log Σ_{s ∈ block b} ω_s σ(±w_sᵀz_i) for each test point and block -> ``(m, n_blocks)``.

    Parameters
    ----------
    weights : ndarray (S, p) float64
        Posterior samples of the regression weights.
    log_omega : ndarray (S,)
        Log sample weights (sum of ω = 1).
    z : ndarray (m, p), y : ndarray (m,) in {0, 1}
    """
    from scipy.special import logsumexp  # heavy: imported on use

    sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    blocks = np.array_split(np.arange(weights.shape[0]), n_blocks)
    out = np.empty((z.shape[0], len(blocks)))
    step = max(1, BLOCK_ELEMENTS // max(1, weights.shape[0]))
    for start in range(0, z.shape[0], step):
        rows = slice(start, start + step)
        u = (z[rows] @ weights.T) * sign[rows, None]            # (b, S)
        terms = -np.logaddexp(0.0, -u) + log_omega[None, :]    # log ω_s + log σ(u)
        for j, cols in enumerate(blocks):
            out[rows, j] = logsumexp(terms[:, cols], axis=1)
    return out


def predictive_log_probs(weights: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y_i | z_i) ``(m,)`` under the equal-weight sample average of σ(wᵀz)."""
    from scipy.special import logsumexp

    log_omega = np.full(weights.shape[0], -np.log(weights.shape[0]))
    return logsumexp(block_log_probs(weights, log_omega, z, y, 1), axis=1)


def _predictive(result, reference, rng, statistic) -> MetricValue:
    """``statistic(log p(y_i | z_i)) -> float`` with its jackknife standard error."""
    from scipy.special import logsumexp

    extras = reference.extras
    # a particle set is used whole, however large; an i.i.d. law gives 4096 draws
    n = N_POSTERIOR if result.law != "particles" else max(N_POSTERIOR, len(result.samples))
    sample = solver_sample(result, n, rng)
    w = weights_from_state(sample.x, int(extras["n_weights"]), extras.get("state", "centred"))
    n_blocks = 1 if sample.exact else min(N_BLOCKS, w.shape[0])
    with np.errstate(divide="ignore"):
        log_omega = np.log(sample.weights)
    logs = block_log_probs(w, log_omega, extras["z_test"], extras["y_test"], n_blocks)
    value = statistic(logsumexp(logs, axis=1))
    if n_blocks == 1:
        return MetricValue(value, 0.0)
    # block masses, to renormalise the predictive without block j
    mass = np.array([np.exp(logsumexp(log_omega[cols]))
                     for cols in np.array_split(np.arange(w.shape[0]), n_blocks)])
    leave_out = np.array([statistic(logsumexp(np.delete(logs, j, axis=1), axis=1)
                                    - np.log1p(-mass[j])) for j in range(n_blocks)])
    var = (n_blocks - 1) / n_blocks * float(np.sum((leave_out - leave_out.mean()) ** 2))
    return MetricValue(value, float(np.sqrt(var)))


def accuracy_metric(result, reference, *, rng: np.random.Generator, draws=None) -> MetricValue:
    """Fraction of test points whose predictive label (p > 1/2) is right."""
    # the true label has probability > 1/2 exactly when the prediction is right
    return _predictive(result, reference, rng,
                       lambda log_p: float(np.mean(log_p > np.log(0.5))))


def loglik_metric(result, reference, *, rng: np.random.Generator, draws=None) -> MetricValue:
    """Mean test log predictive probability of the true label."""
    return _predictive(result, reference, rng, lambda log_p: float(np.mean(log_p)))


def _applies(result, reference) -> bool:
    extras = getattr(reference, "extras", {}) or {}
    has_samples = result.samples is not None or result.draw is not None
    return has_samples and all(k in extras for k in ("z_test", "y_test", "n_weights"))


TEST_ACCURACY = Metric(
    name="test_accuracy", version="2", fn=accuracy_metric, applies=_applies,
    lower_is_better=False, label="test accuracy", requires="posterior samples and a test set",
    description="test accuracy of the posterior predictive (4096 draws of an i.i.d. law, every "
                "particle of a particle set); jackknife Monte Carlo error over draws")
TEST_LOGLIK = Metric(
    name="test_loglik", version="2", fn=loglik_metric, applies=_applies,
    lower_is_better=False, label="test log-likelihood",
    requires="posterior samples and a test set",
    description="mean test log predictive probability (log-sum-exp; 4096 draws of an i.i.d. "
                "law, every particle of a particle set); slightly biased low for few draws "
                "(Jensen); jackknife Monte Carlo error over draws")
