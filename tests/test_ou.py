"""The OU task's closed form against simulation and its own limits."""
from __future__ import annotations

import numpy as np
import pytest

from solvers.em import EulerMaruyama
from solvers.base import RunContext
from tasks.ou import OrnsteinUhlenbeck


def make(dim, entropy=7):
    return OrnsteinUhlenbeck(np.random.SeedSequence(entropy), dim=dim)


def test_same_seed_same_task_other_seed_other_task():
    assert np.array_equal(make(3).b, make(3).b)
    assert not np.array_equal(make(3).b, make(3, entropy=8).b)


def test_marginal_at_zero_is_initial_law_and_tends_to_stationary_law():
    task = make(4)
    mean0, cov0 = task.marginal(0.0)
    np.testing.assert_allclose(mean0, 0.0, atol=1e-12)
    np.testing.assert_allclose(cov0, np.eye(4), atol=1e-10)
    mean_inf, cov_inf = task.marginal(200.0)
    np.testing.assert_allclose(mean_inf, task.b, atol=1e-6)
    np.testing.assert_allclose(cov_inf, np.linalg.inv(task.A) / task.beta, atol=1e-6)


def test_closed_form_matches_a_long_euler_maruyama_simulation():
    task = make(3)
    solver = EulerMaruyama(n_particles=40000, dt=1e-3)
    solver.setup(task, [0.5, 1.0], np.random.SeedSequence(1), RunContext())
    results = solver.run()
    for t in (0.5, 1.0):
        x = results[t].samples
        mean, cov = task.marginal(t)
        scale = np.sqrt(np.diag(cov))
        # 40k particles: sampling error ~ 0.005 sd; dt bias O(1e-3)
        np.testing.assert_allclose(x.mean(axis=0), mean, atol=0.03 * scale.max())
        np.testing.assert_allclose(np.cov(x.T), cov, atol=0.04 * cov.diagonal().max())


def test_reference_log_density_is_normalised_in_1d():
    task = make(1)
    ref = task.reference(0.5)
    grid = np.linspace(-15, 15, 20001)[:, None]
    mass = np.trapezoid(np.exp(ref.log_density(grid)), grid[:, 0])
    assert mass == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("params", [{"dim": 0}, {"dim": -2}, {"dim": 2.5}])
def test_invalid_dimension_is_rejected(params):
    with pytest.raises(ValueError):
        OrnsteinUhlenbeck.validate_params(params)


def test_closed_form_moments_at_d64_match_an_independent_euler_maruyama_run():
    """The large tier's reference: D = 64, t = 0.5, against 4000 EM paths (dt = 5e-4)."""
    from metrics.moments import moment_errors
    from metrics.base import SolverSample

    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=64)
    assert task.eigval.max() * 5e-4 < 0.2  # the stiffest mode is resolved
    rng = np.random.default_rng(1)
    x = task.sample_initial(4000, rng)
    a, b = task.quadratic_potential()
    for _ in range(1000):
        x += -(x - b) @ a * 5e-4 + np.sqrt(2 * 5e-4) * rng.standard_normal(x.shape)
    mean, cov = task.marginal(0.5)
    sample = SolverSample(x, np.full(len(x), 1 / len(x)), exact=True, weight_sq=1 / len(x))
    mean_err, cov_err = moment_errors(sample, mean, cov, rng)
    # within sampling error (the floor: what 4000 exact draws score) plus EM's O(dt) bias
    assert mean_err.value < 3 * mean_err.floor
    assert cov_err.value < 1.5 * cov_err.floor + 0.01, (cov_err.value, cov_err.floor)
