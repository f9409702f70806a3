"""Posterior-predictive metrics for classification tasks (``bayesian_logreg``).

The predictive probability of label 1 at a test point z is the Monte Carlo
average p(z) = (1/S) Σ_s σ(w_sᵀz) over S ≤ 4096 posterior samples of the
solver (``result.draw`` when available, else a subsample of its samples;
solvers with fewer samples, e.g. 100 SVGD particles, use all of them).
The weights are the first ``n_weights`` coordinates of a sample (the last,
log α, does not enter the likelihood), or, for the task's non-centred state,
those coordinates times exp(−log α / 2) (``extras["state"]``). Test data come from
``reference.extras`` (``z_test`` with the intercept column, ``y_test`` in {0, 1}).

- ``test_accuracy``: mean of [p(z_i) > 1/2] == y_i (an exact tie counts as an error).
- ``test_loglik``: mean of log p(y_i | z_i), computed by log-sum-exp.
Both are higher-is-better; their Monte Carlo error shrinks like S^(-1/2).
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from metrics.base import Metric, finite_samples, subsample
from tasks.bayesian_logreg import weights_from_state

N_POSTERIOR = 4096
#: cap on samples x test points per block (memory bound)
BLOCK_ELEMENTS = 4_000_000


def posterior_weights(result, n_weights: int, rng: np.random.Generator,
                      state: str = "centred") -> np.ndarray:
    """At most 4096 weight samples ``(S, n_weights)`` from a solver result."""
    if result.draw is not None:
        x, _ = result.draw(N_POSTERIOR, rng)
    else:
        x = subsample(np.asarray(result.samples, dtype=np.float64), N_POSTERIOR, rng)
    x = np.asarray(x, dtype=np.float64)
    if not finite_samples(x):
        raise ValueError("non-finite posterior samples")
    return weights_from_state(x, n_weights, state)


def predictive_log_probs(weights: np.ndarray, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """log p(y_i | z_i) ``(m,)`` under the sample average of σ(wᵀz).

    Parameters
    ----------
    weights : ndarray (S, p) float64
    z : ndarray (m, p) float64
    y : ndarray (m,) int in {0, 1}
    """
    sign = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    out = np.empty(z.shape[0])
    step = max(1, BLOCK_ELEMENTS // max(1, weights.shape[0]))
    for start in range(0, z.shape[0], step):
        block = slice(start, start + step)
        u = (z[block] @ weights.T) * sign[block, None]  # (b, S)
        # log σ(u) = −softplus(−u); average the probabilities, not the logs
        out[block] = logsumexp(-np.logaddexp(0.0, -u), axis=1) - np.log(weights.shape[0])
    return out


def accuracy_metric(result, reference, *, rng: np.random.Generator) -> float:
    """Fraction of test points whose predictive label (p > 1/2) is right."""
    extras = reference.extras
    w = posterior_weights(result, int(extras["n_weights"]), rng,
                          extras.get("state", "centred"))
    log_p_true = predictive_log_probs(w, extras["z_test"], extras["y_test"])
    # the true label has probability > 1/2 exactly when the prediction is right
    return float(np.mean(log_p_true > np.log(0.5)))


def loglik_metric(result, reference, *, rng: np.random.Generator) -> float:
    """Mean test log predictive probability of the true label."""
    extras = reference.extras
    w = posterior_weights(result, int(extras["n_weights"]), rng,
                          extras.get("state", "centred"))
    return float(np.mean(predictive_log_probs(w, extras["z_test"], extras["y_test"])))


def _applies(result, reference) -> bool:
    extras = getattr(reference, "extras", {}) or {}
    has_samples = result.samples is not None or result.draw is not None
    return has_samples and all(k in extras for k in ("z_test", "y_test", "n_weights"))


TEST_ACCURACY = Metric(
    name="test_accuracy", version="1", fn=accuracy_metric, applies=_applies,
    lower_is_better=False,
    description="test accuracy of the posterior predictive (<= 4096 solver samples); "
                "MC error ~ S^-1/2 in the predictive probabilities")
TEST_LOGLIK = Metric(
    name="test_loglik", version="1", fn=loglik_metric, applies=_applies,
    lower_is_better=False,
    description="mean test log predictive probability (<= 4096 solver samples, "
                "log-sum-exp); slightly biased low for small S (Jensen)")
