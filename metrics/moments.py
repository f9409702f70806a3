"""Gaussian-moment errors: cheap, exact, density-free checks for Gaussian references.

For a reference with known mean m and covariance Σ (``reference.moments``,
e.g. every OU marginal):

- ``mean_error`` = ‖m̂ − m‖₂ / ‖m‖₂,
- ``cov_error``  = ‖Σ̂ − Σ‖_F / ‖Σ‖_F,

with m̂, Σ̂ the moments of the solver's law: of the (weighted) particle set
itself, exactly, or of 8192 fresh draws of an i.i.d. law (whose sampling
error is then part of the value; its standard error is a 64-replicate
bootstrap). Both are biased upwards by sampling: N exact draws give
E‖m̂ − m‖² = tr Σ / N and E‖Σ̂ − Σ‖²_F ≈ (tr(Σ)² + tr(Σ²)) / N, reported as the
row's ``*_floor`` (the score of the exact law at the same sample size).
"""
from __future__ import annotations

import numpy as np

from metrics.base import Metric, MetricValue, SolverSample, has_samples, solver_sample

N_MOMENTS = 8192
N_BOOTSTRAP = 64


def weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(d,)`` and covariance ``(d, d)`` of Σ w_i δ(x_i) (weights sum to 1)."""
    mean = w @ x
    centred = x - mean
    return mean, (centred * w[:, None]).T @ centred


def _errors(x: np.ndarray, w: np.ndarray, mean: np.ndarray, cov: np.ndarray
            ) -> tuple[float, float]:
    m_hat, c_hat = weighted_moments(x, w)
    return (float(np.linalg.norm(m_hat - mean) / np.linalg.norm(mean)),
            float(np.linalg.norm(c_hat - cov) / np.linalg.norm(cov)))


def moment_errors(sample: SolverSample, mean: np.ndarray, cov: np.ndarray,
                  rng: np.random.Generator) -> tuple[MetricValue, MetricValue]:
    """(mean error, covariance error), each with standard error and exact-law floor."""
    mean_err, cov_err = _errors(sample.x, sample.weights, mean, cov)
    effective = 1.0 / sample.weight_sq if sample.weight_sq else sample.x.shape[0]
    trace = float(np.trace(cov))
    mean_floor = np.sqrt(trace / effective) / float(np.linalg.norm(mean))
    cov_floor = np.sqrt((trace ** 2 + float(np.sum(cov * cov))) / effective) \
        / float(np.linalg.norm(cov))
    if sample.exact:
        return MetricValue(mean_err, 0.0, floor=mean_floor), \
            MetricValue(cov_err, 0.0, floor=cov_floor)
    n = sample.x.shape[0]
    boot = np.array([_errors(sample.x[rows], sample.weights[rows] / sample.weights[rows].sum(),
                             mean, cov)
                     for rows in rng.integers(n, size=(N_BOOTSTRAP, n))])
    se = boot.std(axis=0, ddof=1)
    return MetricValue(mean_err, float(se[0]), floor=mean_floor), \
        MetricValue(cov_err, float(se[1]), floor=cov_floor)


def _metric(index: int):
    def fn(result, reference, *, rng: np.random.Generator, draws=None) -> MetricValue:
        mean, cov = reference.moments
        # a particle set is used whole however large (its moments are cheap and exact)
        n = N_MOMENTS if result.law != "particles" else max(N_MOMENTS, len(result.samples))
        sample = solver_sample(result, n, rng)
        return moment_errors(sample, np.asarray(mean, dtype=np.float64),
                             np.asarray(cov, dtype=np.float64), rng)[index]
    return fn


def _applies(result, reference) -> bool:
    return has_samples(result) and getattr(reference, "moments", None) is not None


MEAN_ERROR = Metric(
    name="mean_error", version="1", fn=_metric(0), applies=_applies, lower_bound=0.0,
    label="relative mean error", requires="samples and a reference with known moments",
    description="||mean - m|| / ||m|| of the solver's law (particle set exactly, or 8192 draws); "
                "biased up by sampling: N exact draws score ~ sqrt(tr S / N) / ||m|| "
                "(mean_error_floor)")
COV_ERROR = Metric(
    name="cov_error", version="1", fn=_metric(1), applies=_applies, lower_bound=0.0,
    label="relative covariance error", requires="samples and a reference with known moments",
    description="||cov - S||_F / ||S||_F of the solver's law (particle set exactly, or 8192 "
                "draws); biased up by sampling (cov_error_floor: N exact draws)")
