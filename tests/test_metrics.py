"""Metrics against closed forms, their stated biases and noise, and the law they judge."""
from __future__ import annotations

import numpy as np
import pytest

from metrics.base import MetricValue, ReferenceDraws, solver_sample
from metrics.moments import COV_ERROR, MEAN_ERROR
from metrics.sample_distances import ENERGY, SLICED_W2, energy_estimate, reference_terms
from metrics.symkl import SYMKL, SYMKL_GRID, SYMKL_KDE
from solvers.base import PARTICLES, SolverResult
from tasks.base import Reference, gaussian_log_density, gaussian_sampler


def gaussian_symkl(m1, s1, m2, s2) -> float:
    """Analytic KL(N1||N2) + KL(N2||N1)."""
    d = len(m1)
    i1, i2 = np.linalg.inv(s1), np.linalg.inv(s2)
    dm = m1 - m2
    return 0.5 * (np.trace(i2 @ s1) + np.trace(i1 @ s2) - 2 * d + dm @ (i1 + i2) @ dm)


def gaussian_result(mean, cov, rng, n=8192):
    """An i.i.d. law with a density (what the oracle and density solvers return)."""
    sample = gaussian_sampler(mean, cov)

    def draw(m, gen):
        x = sample(m, gen)
        return x, gaussian_log_density(x, mean, cov)

    return SolverResult(samples=sample(n, rng), draw=draw,
                        log_density=lambda x: gaussian_log_density(x, mean, cov))


def gaussian_reference(mean, cov):
    return Reference(t=1.0, sample=gaussian_sampler(mean, cov),
                     log_density=lambda x: gaussian_log_density(x, mean, cov),
                     moments=(mean, cov))


def evaluate(metric, result, reference, seed):
    """A metric with its own reference draws (a fresh stream per seed)."""
    draws = ReferenceDraws(reference, np.random.SeedSequence(1000 + seed))
    return metric(result, reference, rng=np.random.default_rng(seed), draws=draws)


# --- Monte Carlo SymKL -----------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 3, 8])
def test_symkl_mc_matches_the_analytic_value_and_its_standard_error_is_honest(dim):
    rng = np.random.default_rng(dim)
    m1, m2 = rng.normal(size=dim), rng.normal(size=dim) * 0.5
    a = rng.normal(size=(dim, dim))
    s1, s2 = np.eye(dim) + 0.3 * a @ a.T / dim, 1.5 * np.eye(dim)
    exact = gaussian_symkl(m1, s1, m2, s2)
    out = [evaluate(SYMKL, gaussian_result(m1, s1, np.random.default_rng(k)),
                    gaussian_reference(m2, s2), k) for k in range(12)]
    values = np.array([o.value for o in out])
    reported = np.median([o.se for o in out])
    observed = values.std(ddof=1)
    assert abs(values.mean() - exact) < 4 * observed / np.sqrt(len(values))
    # the stated standard error is the spread of the estimate (to sampling accuracy)
    assert 0.5 * observed < reported < 2.0 * observed


def test_symkl_of_identical_laws_is_exactly_zero_with_zero_error():
    mean, cov = np.zeros(4), np.eye(4)
    value = evaluate(SYMKL, gaussian_result(mean, cov, np.random.default_rng(0)),
                     gaussian_reference(mean, cov), 1)
    assert abs(value.value) < 1e-12 and value.se < 1e-12


def half_law(mean, cov):
    """The reference conditioned on x_0 > mean_0: support on half the reference's mass."""
    sample = gaussian_sampler(mean, cov)

    def log_density(x):
        x = np.atleast_2d(x)
        inside = x[:, 0] > mean[0]
        return np.where(inside, gaussian_log_density(x, mean, cov) + np.log(2.0), -np.inf)

    def draw(n, rng):
        x = sample(2 * n + 64, rng)
        x = x[x[:, 0] > mean[0]][:n]
        return x, log_density(x)

    return SolverResult(samples=draw(1000, np.random.default_rng(0))[0], draw=draw,
                        log_density=log_density)


def test_a_law_that_misses_half_the_reference_has_infinite_symkl_with_a_note():
    mean, cov = np.zeros(2), np.eye(2)
    value = evaluate(SYMKL, half_law(mean, cov), gaussian_reference(mean, cov), 0)
    assert value.value == np.inf
    assert "KL(reference||solver) = inf" in value.note


# --- energy distance: laws versus particle sets ---------------------------------------------
def particles(x, weights=None):
    return SolverResult(samples=np.asarray(x, dtype=np.float64), weights=weights, law=PARTICLES)


def test_energy_on_iid_draws_is_unbiased_and_its_standard_error_is_honest():
    mean, ref = np.zeros(3), gaussian_reference(np.zeros(3), np.eye(3))
    same = [evaluate(ENERGY, gaussian_result(mean, np.eye(3), np.random.default_rng(k)), ref, k)
            for k in range(12)]
    values = np.array([v.value for v in same])
    # exact law: mean 0 within noise, values on both sides of 0
    assert abs(values.mean()) < 3 * values.std(ddof=1) / 4 + 1e-5
    assert (values < 0).any() and (values > 0).any()
    # under the null the jackknife is conservative, never optimistic
    assert np.median([v.se for v in same]) > 0.7 * values.std(ddof=1)
    shifted = [evaluate(ENERGY, gaussian_result(mean + 0.2, np.eye(3), np.random.default_rng(k)),
                        ref, k) for k in range(12)]
    values = np.array([v.value for v in shifted])
    reported = np.median([v.se for v in shifted])
    assert values.min() > 0.01
    assert 0.5 * values.std(ddof=1) < reported < 2.0 * values.std(ddof=1)


@pytest.mark.parametrize("n", [50, 200, 1000])
def test_exact_particles_score_their_floor_and_never_below_the_oracle(n):
    """N exact draws, judged as the particle set they are, score E|Y-Y'|/N on average."""
    sample = gaussian_sampler(np.zeros(2), np.eye(2))
    scores, oracle = [], []
    for k in range(24):
        rng = np.random.default_rng(k)
        terms = reference_terms(sample(1024, rng))
        scores.append(energy_estimate(solver_sample(particles(sample(n, rng)), 4096, rng),
                                      terms["y"], terms["rows"]))
        iid = solver_sample(gaussian_result(np.zeros(2), np.eye(2), rng), 1024, rng)
        oracle.append(energy_estimate(iid, terms["y"], terms["rows"]).value)
    values = np.array([s.value for s in scores])
    floor = np.median([s.floor for s in scores])
    assert floor == pytest.approx(np.sqrt(np.pi) / n, rel=0.05)  # E|Y-Y'| = sqrt(pi) in 2-D
    assert abs(values.mean() - floor) < 4 * values.std(ddof=1) / np.sqrt(len(values))
    assert np.median(values) >= np.median(oracle)


def test_weighted_particles_equal_the_same_set_with_duplicates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 2))
    ref = gaussian_reference(np.zeros(2), np.eye(2))
    weighted = evaluate(ENERGY, particles(np.vstack([x, x[:10]]),
                                          np.r_[np.ones(40), np.ones(10)]), ref, 0)
    duplicated = evaluate(ENERGY, particles(np.vstack([x, x[:10]])), ref, 0)
    as_weights = evaluate(ENERGY, particles(x, np.r_[2 * np.ones(10), np.ones(30)]), ref, 0)
    # equal up to the single-precision distances (~1e-7 relative each)
    assert weighted.value == pytest.approx(duplicated.value, rel=1e-12)
    assert as_weights.value == pytest.approx(duplicated.value, rel=0, abs=1e-6)
    # the floor is that of i.i.d. particles with these weights: sum w^2 = 0.028 against 1/50
    assert as_weights.floor == pytest.approx(duplicated.floor * 1.4, rel=1e-10)


def test_a_large_particle_set_is_subsampled_without_bias():
    """Over 4096 particles the V-statistic is estimated from draws with replacement."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6000, 1)) * 1.3
    ref = gaussian_reference(np.zeros(1), np.eye(1))
    y = ref.sample(4096, np.random.default_rng(1))
    terms = reference_terms(y)
    exact = energy_estimate(solver_sample(particles(x), 10_000, rng), terms["y"], terms["rows"])
    estimates = [energy_estimate(solver_sample(particles(x), 1024, np.random.default_rng(k)),
                                 terms["y"], terms["rows"]) for k in range(30)]
    values = np.array([e.value for e in estimates])
    assert abs(values.mean() - exact.value) < 4 * values.std(ddof=1) / np.sqrt(30)
    assert 0.5 * values.std(ddof=1) < np.median([e.se for e in estimates]) \
        < 2.5 * values.std(ddof=1)


def test_energy_detects_a_shift_far_beyond_its_error():
    ref = gaussian_reference(np.zeros(3), np.eye(3))
    same = evaluate(ENERGY, gaussian_result(np.zeros(3), np.eye(3), np.random.default_rng(0)),
                    ref, 0)
    shifted = evaluate(ENERGY, gaussian_result(np.full(3, 0.3), np.eye(3),
                                               np.random.default_rng(0)), ref, 0)
    assert abs(same.value) < 4 * same.se
    assert shifted.value > 10 * shifted.se and shifted.value > 0.02


# --- KDE SymKL, grid SymKL, sliced W2, moments ----------------------------------------------------
def test_kde_symkl_bias_grows_with_dimension_for_exact_samples():
    """The stated bias: KDE SymKL of *exact* samples is not 0 and grows with D."""
    values = []
    for dim in (1, 6):
        mean, cov = np.zeros(dim), np.eye(dim)
        x = gaussian_sampler(mean, cov)(4000, np.random.default_rng(dim))
        values.append(evaluate(SYMKL_KDE, particles(x), gaussian_reference(mean, cov), dim).value)
    assert values[0] < 0.01
    assert values[1] > 5 * values[0]


def test_kde_symkl_is_not_reported_above_twelve_dimensions():
    ref = gaussian_reference(np.zeros(13), np.eye(13))
    result = particles(np.random.default_rng(0).standard_normal((500, 13)))
    assert not SYMKL_KDE.applies(result, ref)
    assert "D <= 12" in SYMKL_KDE.not_applicable().note


def test_metrics_return_nan_with_a_reason_not_raise_on_non_finite_input():
    mean, cov = np.zeros(2), np.eye(2)
    bad = SolverResult(samples=np.full((100, 2), np.nan),
                       draw=lambda n, rng: (np.full((n, 2), np.nan), np.full(n, np.nan)),
                       log_density=lambda x: np.full(len(x), np.nan))
    ref = gaussian_reference(mean, cov)
    for metric in (SYMKL, ENERGY, SLICED_W2, MEAN_ERROR):
        value = evaluate(metric, bad, ref, 0)
        assert np.isnan(value.value) and value.note.startswith("not computed")
    value = evaluate(SYMKL_KDE, particles(np.full((100, 2), np.nan)), ref, 0)
    assert np.isnan(value.value) and "non-finite" in value.note


def test_grid_symkl_against_quadrature_of_two_gaussians():
    grid = np.linspace(-10, 10, 4001)
    q = np.exp(gaussian_log_density(grid[:, None], np.zeros(1), np.eye(1)))
    ref = Reference(t=1.0, grid=grid, density=q)
    m, s = np.array([0.5]), np.array([[1.3]])
    result = gaussian_result(m, s, np.random.default_rng(0))
    value = SYMKL_GRID(result, ref, rng=np.random.default_rng(0))
    assert value.value == pytest.approx(gaussian_symkl(m, s, np.zeros(1), np.eye(1)), rel=1e-4)
    assert value.se == 0.0


def test_sliced_w2_of_weights_equals_duplicates_and_of_equal_sizes_the_sorted_formula():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 3))
    ref = gaussian_reference(np.zeros(3), np.eye(3))
    weighted = evaluate(SLICED_W2, particles(x, np.r_[3 * np.ones(5), np.ones(25)]), ref, 0)
    duplicated = evaluate(SLICED_W2, particles(np.vstack([x, x[:5], x[:5]])), ref, 0)
    assert weighted.value == pytest.approx(duplicated.value, rel=1e-10)
    # two equal-size samples: mean squared difference of the sorted projections
    from metrics.sample_distances import sliced_w2_estimate

    directions = np.eye(3)
    y = rng.standard_normal((30, 3))
    value = sliced_w2_estimate(solver_sample(particles(x), 100, rng), np.sort(directions @ y.T, 1),
                               directions).value
    expected = np.sqrt(np.mean((np.sort(x, 0) - np.sort(y, 0)) ** 2))
    assert value == pytest.approx(expected, rel=1e-12)
    # the general (merged-quantile) path gives the same number when forced
    uneven = sliced_w2_estimate(solver_sample(particles(x, np.ones(30) + 1e-12 * np.arange(30)),
                                              100, rng), np.sort(directions @ y.T, 1), directions)
    assert uneven.value == pytest.approx(expected, rel=1e-6)


def test_moment_errors_of_a_particle_set_are_exact_and_of_draws_carry_their_noise():
    mean, cov = np.array([1.0, -2.0]), np.array([[2.0, 0.3], [0.3, 0.5]])
    ref = gaussian_reference(mean, cov)
    x = gaussian_sampler(mean, cov)(500, np.random.default_rng(0))
    value = evaluate(MEAN_ERROR, particles(x), ref, 0)
    assert value.value == pytest.approx(np.linalg.norm(x.mean(0) - mean) / np.linalg.norm(mean))
    assert value.se == 0.0 and value.floor > 0
    cov_value = evaluate(COV_ERROR, particles(x), ref, 0)
    expected = np.linalg.norm(np.cov(x.T, bias=True) - cov) / np.linalg.norm(cov)
    assert cov_value.value == pytest.approx(expected)
    draws = [evaluate(MEAN_ERROR, gaussian_result(mean, cov, np.random.default_rng(k)), ref, k)
             for k in range(12)]
    assert np.median([d.value for d in draws]) < 3 * draws[0].floor
    assert all(d.se > 0 for d in draws)


# --- shared reference draws ------------------------------------------------------------------
def test_reference_draws_are_shared_and_a_disk_cache_changes_no_value(tmp_path):
    ref = gaussian_reference(np.zeros(2), np.eye(2))
    result = particles(np.random.default_rng(0).standard_normal((300, 2)))
    values = {}
    for label, directory in (("memory", None), ("disk", tmp_path), ("reloaded", tmp_path)):
        draws = ReferenceDraws(ref, np.random.SeedSequence(7), directory, key="k")
        values[label] = [metric(result, ref, rng=np.random.default_rng(1), draws=draws).value
                         for metric in (ENERGY, SLICED_W2, SYMKL_KDE)]
    assert values["memory"] == values["disk"] == values["reloaded"]
    assert len(list(tmp_path.glob("*.npz"))) == 3
    # the same stream whatever the metric asks first
    a = ReferenceDraws(ref, np.random.SeedSequence(7)).sample("energy", 4096)
    b = ReferenceDraws(ref, np.random.SeedSequence(7))
    b.sample("sliced", 100)
    np.testing.assert_array_equal(a, b.sample("energy", 4096))


def test_a_plugin_metric_without_draws_and_returning_a_float_still_works():
    from metrics.base import Metric

    metric = Metric("plain", "1", lambda r, ref, *, rng: 0.5, lambda r, ref: True)
    value = metric(particles(np.zeros((3, 1))), gaussian_reference(np.zeros(1), np.eye(1)),
                   rng=np.random.default_rng(0))
    assert value == MetricValue(0.5)


@pytest.mark.parametrize("dim, weighted", [(1, False), (4, True), (12, False)])
def test_fast_kde_logpdf_equals_scipy(dim, weighted):
    from scipy.stats import gaussian_kde

    from numerics.kde import kde_logpdf

    rng = np.random.default_rng(dim)
    data = 2.0 * rng.standard_normal((dim, 3000)) + 1.0
    kde = gaussian_kde(data, weights=rng.random(3000) if weighted else None)
    points = 3.0 * rng.standard_normal((2000, dim))  # tails included
    expected = kde.logpdf(points.T)
    np.testing.assert_allclose(kde_logpdf(kde, points), expected, rtol=1e-10)
    # single precision: the metric's setting, ~1e-5 where the density is not negligible
    close = expected > expected.max() - 20
    np.testing.assert_allclose(kde_logpdf(kde, points, "float32")[close], expected[close],
                               rtol=0, atol=2e-4)
