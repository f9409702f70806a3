"""The exact Gaussian JKO oracle: its step is the JKO minimiser, and it converges as h -> 0."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from solvers.base import RunContext
from solvers.gaussian_jko import GaussianJko, gaussian_jko_step
from tasks.ou import OrnsteinUhlenbeck
from tasks.base import gaussian_log_density
from tasks.stationary_gmm import StationaryGMM


def gaussian_symkl(m1, s1, m2, s2):
    def kl(ma, sa, mb, sb):
        inv = np.linalg.inv(sb)
        d = mb - ma
        return 0.5 * (np.trace(inv @ sa) + d @ inv @ d - ma.size
                      + np.linalg.slogdet(sb)[1] - np.linalg.slogdet(sa)[1])
    return kl(m1, s1, m2, s2) + kl(m2, s2, m1, s1)


def jko_objective_minimum(mean, cov, a, b, h, beta):
    """The JKO step by brute force: minimise over maps y = m' + LLᵀ(x − m)."""
    dim = mean.size
    new_mean = np.linalg.solve(np.eye(dim) + h * a, mean + h * a @ b)
    rows, cols = np.tril_indices(dim)

    def objective(v):
        low = np.zeros((dim, dim))
        low[rows, cols] = v
        m = low @ low.T
        new_cov = m @ cov @ m
        transport = np.trace((m - np.eye(dim)) @ cov @ (m - np.eye(dim)))
        energy = 0.5 * np.trace(a @ new_cov)   # mean part is fixed by new_mean
        entropy = -0.5 * np.linalg.slogdet(new_cov)[1]
        return transport / (2 * h) + energy + entropy / beta

    res = minimize(objective, np.eye(dim)[rows, cols], method="BFGS",
                   options={"gtol": 1e-12, "maxiter": 20000})
    low = np.zeros((dim, dim))
    low[rows, cols] = res.x
    m = low @ low.T
    return new_mean, m @ cov @ m


@pytest.mark.parametrize("dim", [1, 3])
def test_closed_form_step_is_the_jko_minimiser(dim):
    rng = np.random.default_rng(dim)
    q = rng.standard_normal((dim, dim))
    a = q @ q.T + 0.5 * np.eye(dim)
    b = rng.standard_normal(dim)
    mean, cov = rng.standard_normal(dim), np.eye(dim) + 0.3 * np.diag(rng.random(dim))
    for beta in (1.0, 2.5):
        got = gaussian_jko_step(mean, cov, a, b, 0.1, beta)
        want = jko_objective_minimum(mean, cov, a, b, 0.1, beta)
        np.testing.assert_allclose(got[0], want[0], atol=1e-10)
        np.testing.assert_allclose(got[1], want[1], atol=1e-6)


def test_stationary_law_is_a_fixed_point():
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    b = np.array([1.0, -1.0])
    beta = 2.0
    cov_inf = np.linalg.inv(a) / beta
    mean, cov = gaussian_jko_step(b, cov_inf, a, b, 0.3, beta)
    np.testing.assert_allclose(mean, b, atol=1e-12)
    np.testing.assert_allclose(cov, cov_inf, atol=1e-12)


def run(task, times, h):
    solver = GaussianJko(h=h, n_samples=100)
    solver.setup(task, times, np.random.SeedSequence(0), RunContext())
    return solver.run()


def iterate(task, h, n_steps):
    mean, cov = task.initial_gaussian()
    a, b = task.quadratic_potential()
    for _ in range(n_steps):
        mean, cov = gaussian_jko_step(mean, cov, a, b, h, task.beta)
    return mean, cov


def test_solver_returns_the_iterates_at_each_time():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(7), dim=4)
    results = run(task, [0.2, 0.5], 0.05)
    probe = task.reference(0.5).sample(50, np.random.default_rng(1))
    for t, n_steps in ((0.2, 4), (0.5, 10)):
        mean, cov = iterate(task, 0.05, n_steps)
        np.testing.assert_allclose(results[t].log_density(probe),
                                   gaussian_log_density(probe, mean, cov), rtol=1e-10)
        x, logp = results[t].draw(20, np.random.default_rng(2))
        np.testing.assert_allclose(logp, gaussian_log_density(x, mean, cov), rtol=1e-10)
        assert results[t].samples.shape == (100, 4)


def test_first_order_convergence_to_the_ou_marginal():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(7), dim=4)
    mean, cov = task.marginal(0.5)
    errors = [gaussian_symkl(*iterate(task, h, round(0.5 / h)), mean, cov)
              for h in (0.1, 0.05, 0.025)]
    # a first-order scheme: SymKL ~ (error)^2 ~ h^2, so halving h divides it by about 4
    assert errors[0] > errors[1] > errors[2] > 0
    assert 2.5 < errors[0] / errors[1] < 6 and 2.5 < errors[1] / errors[2] < 6


def test_skips_tasks_without_a_quadratic_potential():
    task = StationaryGMM(np.random.SeedSequence(0), dim=2)
    skip, reason = GaussianJko(h=0.05, n_samples=10).skip(task)
    assert skip and "quadratic" in reason
    assert GaussianJko(h=0.05, n_samples=10).skip(OrnsteinUhlenbeck(np.random.SeedSequence(0),
                                                                    dim=2)) == (False, "")
