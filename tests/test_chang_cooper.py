"""Chang–Cooper scheme: closed-form OU, mass, Gibbs state, positivity, grid law."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from solvers.base import RunContext
from numerics.chang_cooper import (LOG_ZERO, bayes_update, chang_cooper_weight, evolve_density,
                                   grid_law, implicit_euler_factor, operator_bands,
                                   solve_on_grid)
from solvers.chang_cooper import ChangCooper
from tasks.ou import OrnsteinUhlenbeck


def double_well(x):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return (x**2 - 1.0) ** 2 + 0.3 * x


def std_normal_log_density(x):
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return -0.5 * x**2 - 0.5 * np.log(2 * np.pi)


def trapezoid_symkl(grid, p, q):
    tiny = 1e-300
    return float(np.trapezoid((p - q) * (np.log(p + tiny) - np.log(q + tiny)), grid))


def run_solver(task, times, seed=0, **params):
    solver = ChangCooper(**params)
    solver.setup(task, times, np.random.SeedSequence(seed), RunContext())
    return solver.run()


def test_weight_series_matches_exact_form_and_limits():
    w = np.array([-1e-3 * (1 + 1e-9), -2e-3, 2e-3, 1e-3 * (1 + 1e-9)])
    exact = 1.0 / w - 1.0 / np.expm1(w)
    assert np.allclose(chang_cooper_weight(w), exact, rtol=0, atol=1e-12)
    # just inside the series branch it must agree with the exact form too
    w_in = np.array([-0.999e-3, 0.999e-3])
    assert np.allclose(chang_cooper_weight(w_in), 1.0 / w_in - 1.0 / np.expm1(w_in), atol=1e-11)
    assert chang_cooper_weight(np.array([0.0]))[0] == 0.5
    big = chang_cooper_weight(np.array([-800.0, -50.0, 50.0, 800.0]))
    assert np.all((big >= 0) & (big <= 1)) and np.all(np.isfinite(big))
    assert big[0] == pytest.approx(1.0, abs=2e-3) and big[-1] == pytest.approx(0.0, abs=2e-3)


@pytest.mark.parametrize("seed", [0, 1])
def test_ou_1d_matches_closed_form(seed):
    task = OrnsteinUhlenbeck(np.random.SeedSequence(seed), dim=1)
    results = run_solver(task, [0.5, 1.0])
    grid = np.linspace(-10, 10, 4001)
    for t in (0.5, 1.0):
        p = np.exp(results[t].log_density(grid[:, None]))
        q = np.exp(task.reference(t).log_density(grid[:, None]))
        assert trapezoid_symkl(grid, p, q) < 1e-4
    # and the scheme is not trivially right: a coarse grid is measurably worse
    coarse = run_solver(task, [1.0], n_grid=40, dt=0.05)[1.0]
    p = np.exp(coarse.log_density(grid[:, None]))
    assert trapezoid_symkl(grid, p, q) > 10 * trapezoid_symkl(
        grid, np.exp(results[1.0].log_density(grid[:, None])), q)


def test_operator_columns_sum_to_zero_and_mass_is_conserved():
    grid = np.linspace(-4, 4, 801)
    dx = grid[1] - grid[0]
    lower, diag, upper = operator_bands(double_well(grid), dx, beta=2.0)
    col = diag.copy()
    col[:-1] += lower
    col[1:] += upper
    assert np.max(np.abs(col)) < 1e-9 * np.max(np.abs(diag))
    rho = np.exp(std_normal_log_density(grid))
    rho /= rho.sum() * dx
    out = evolve_density(rho, implicit_euler_factor((lower, diag, upper), 1e-3), 3000)
    assert abs(out.sum() * dx - 1.0) < 1e-12
    assert not np.allclose(out, rho, atol=1e-3)  # it did evolve


def test_discrete_gibbs_state_is_exact_stationary_state():
    grid = np.linspace(-3, 3, 301)
    dx = grid[1] - grid[0]
    beta = 1.5
    phi = double_well(grid)
    bands = operator_bands(phi, dx, beta)
    gibbs = np.exp(-beta * (phi - phi.min()))
    gibbs /= gibbs.sum() * dx
    lower, diag, upper = bands
    residual = diag * gibbs
    residual[:-1] += upper * gibbs[1:]
    residual[1:] += lower * gibbs[:-1]
    assert np.max(np.abs(residual)) < 1e-10 * np.max(np.abs(diag * gibbs))
    # long implicit run from N(0, 1) relaxes to it
    rho = np.exp(std_normal_log_density(grid))
    rho /= rho.sum() * dx
    out = evolve_density(rho, implicit_euler_factor(bands, 0.5), 400)
    assert np.max(np.abs(out - gibbs)) < 1e-8


def test_positivity_under_strong_drift():
    grid = np.linspace(-5, 5, 41)  # w = βΦ'Δx up to ~250
    dx = grid[1] - grid[0]
    rho = np.where(np.abs(grid) > 4, 1.0, 0.0)
    rho /= rho.sum() * dx
    out = evolve_density(rho, implicit_euler_factor(operator_bands(10 * grid**2, dx, 5.0), 0.01), 50)
    assert out.min() >= 0.0 and abs(out.sum() * dx - 1) < 1e-12


def test_bayes_update_gaussian_conjugacy():
    grid = np.linspace(-10, 10, 4001)
    dx = grid[1] - grid[0]
    prior = np.exp(std_normal_log_density(grid))
    y = 1.3
    post = bayes_update(prior, -0.5 * (y - grid) ** 2 - 1000.0, dx)  # offset must not matter
    exact = stats.norm(loc=y / 2, scale=np.sqrt(0.5)).pdf(grid)
    assert np.max(np.abs(post - exact)) < 1e-6
    assert post.sum() * dx == pytest.approx(1.0, abs=1e-12)


def test_update_at_an_evaluation_time_is_included():
    def lik(x):
        return -0.5 * (2.0 - np.asarray(x).reshape(-1)) ** 2
    args = (lambda x: 0.5 * np.asarray(x).reshape(-1) ** 2, 1.0, std_normal_log_density,
            6.0, 301, 0.01)
    _, with_update = solve_on_grid(*args, [0.5], updates=[(0.5, lik)])
    _, without = solve_on_grid(*args, [0.5])
    _, late = solve_on_grid(*args, [0.5], updates=[(0.6, lik)])
    grid = np.linspace(-6, 6, 301)
    dx = grid[1] - grid[0]
    assert np.sum(grid * with_update[0.5]) * dx > 0.5          # pulled towards y = 2
    assert abs(np.sum(grid * without[0.5]) * dx) < 1e-6
    assert np.array_equal(late[0.5], without[0.5])              # future update ignored


def test_grid_law_normalised_and_sampler_matches_interpolant():
    grid = np.linspace(-2, 3, 51)
    density = np.exp(-double_well(grid)) * 7.0          # unnormalised on purpose
    log_density, sample = grid_law(grid, density)
    fine = np.linspace(-2, 3, 20001)
    assert np.trapezoid(np.exp(log_density(fine[:, None])), fine) == pytest.approx(1.0, abs=1e-6)
    assert log_density(np.array([[-2.5], [3.5]])).tolist() == [LOG_ZERO, LOG_ZERO]
    x = sample(40000, np.random.default_rng(3))[:, 0]
    assert x.min() >= -2 and x.max() <= 3
    cdf_vals = np.cumsum(np.exp(log_density(fine[:, None]))) * (fine[1] - fine[0])
    ks = stats.kstest(x, lambda v: np.interp(v, fine, cdf_vals / cdf_vals[-1]))
    assert ks.pvalue > 1e-3


def test_solver_deterministic_under_seed_and_reports_mass():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(5), dim=1)
    a = run_solver(task, [0.2], seed=11, n_grid=200)[0.2]
    b = run_solver(task, [0.2], seed=11, n_grid=200)[0.2]
    c = run_solver(task, [0.2], seed=12, n_grid=200)[0.2]
    assert np.array_equal(a.samples, b.samples)
    assert not np.array_equal(a.samples, c.samples)
    assert a.samples.shape == (8192, 1)
    assert abs(a.info["mass"] - 1.0) < 1e-12
    x, logp = a.draw(100, np.random.default_rng(0))
    assert x.shape == (100, 1) and np.allclose(logp, a.log_density(x))


def test_skip_and_bad_parameters():
    task2 = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=2)
    skip, reason = ChangCooper().skip(task2)
    assert skip and "dim=2" in reason
    assert ChangCooper().skip(OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=1)) == (False, "")
    for bad in ({"n_grid": 2}, {"n_grid": 10.5}, {"dt": -1e-3}, {"half_width": 0.0}):
        with pytest.raises(ValueError):
            ChangCooper(**bad)
