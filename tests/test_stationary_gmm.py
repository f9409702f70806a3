"""The Gaussian-mixture stationary task: its law, potential and references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.sample_distances import energy_distance
from solvers.base import RunContext
from solvers.em import EulerMaruyama
from tasks.stationary_gmm import StationaryGMM, default_components


def make(dim=2, entropy=3, **params):
    return StationaryGMM(np.random.SeedSequence(entropy), dim=dim, **params)


def test_study_pairing_of_dimension_and_components():
    assert [default_components(d) for d in (2, 4, 6, 8, 10, 12)] == [5, 6, 7, 8, 9, 10]
    task = make(6)
    assert task.centres.shape == (7, 6)
    assert np.all(np.abs(task.centres) <= 5.0)
    assert make(2, n_components=3).centres.shape == (3, 2)


def test_same_seed_same_centres_other_seed_other_centres():
    assert np.array_equal(make(4).centres, make(4).centres)
    assert not np.array_equal(make(4).centres, make(4, entropy=4).centres)


def test_stationary_density_is_normalised_in_2d():
    task = make(2)
    grid = np.linspace(-14.0, 14.0, 561)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    dens = np.exp(task.reference(4.0).log_density(pts)).reshape(xx.shape)
    mass = np.trapezoid(np.trapezoid(dens, grid, axis=1), grid)
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_potential_is_minus_log_density_and_gradients_agree():
    task = make(3)
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3.0, size=(7, 3))
    np.testing.assert_allclose(task.potential(x), -task.log_density_stationary(x))
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(task.potential_torch(xt).numpy(), task.potential(x), rtol=1e-12)
    g = task.grad_potential(x)
    np.testing.assert_allclose(task.grad_potential_torch(xt).numpy(), g, rtol=1e-10, atol=1e-12)
    autograd = super(StationaryGMM, task).grad_potential_torch(xt).numpy()
    np.testing.assert_allclose(autograd, g, rtol=1e-10, atol=1e-12)
    eps = 1e-6
    fd = np.stack([(task.potential(x + eps * e) - task.potential(x - eps * e)) / (2 * eps)
                   for e in np.eye(3)], axis=1)
    np.testing.assert_allclose(fd, g, rtol=1e-6, atol=1e-6)


def test_reference_is_rho_star_at_every_time_and_says_so():
    task = make(2)
    x = np.random.default_rng(1).normal(size=(5, 2))
    a, b = task.reference(1.0), task.reference(4.0)
    np.testing.assert_array_equal(a.log_density(x), b.log_density(x))
    assert "stationary" in a.provenance and "every t" in a.provenance
    assert task.default_times[-1] == 4.0


def test_sampler_matches_mixture_moments():
    task = make(2, n_components=4)
    x = task.reference(4.0).sample(200_000, np.random.default_rng(2))
    np.testing.assert_allclose(x.mean(axis=0), task.centres.mean(axis=0), atol=0.03)
    cov = np.cov(task.centres.T, bias=True) + np.eye(2)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.1)


def test_initial_law_is_n_0_16():
    task = make(2)
    x = task.sample_initial(50_000, np.random.default_rng(3))
    assert x.std(axis=0) == pytest.approx([4.0, 4.0], rel=0.02)
    expected = -0.5 * (np.sum(x[:3] ** 2, 1) / 16 + 2 * np.log(2 * np.pi * 16))
    np.testing.assert_allclose(task.log_density_initial(x[:3]), expected)


def test_langevin_particles_approach_rho_star():
    # at t = 4 the mode weights are still relaxing (metastability), by t = 40 they are not
    task = make(2)
    solver = EulerMaruyama(n_particles=1500, dt=1e-2)
    solver.setup(task, [4.0, 40.0], np.random.SeedSequence(5), RunContext())
    results = solver.run()
    rng = np.random.default_rng(6)
    y = task.reference(4.0).sample(1500, rng)
    d_initial = energy_distance(task.sample_initial(1500, rng), y)
    assert energy_distance(results[4.0].samples, y) < 0.4 * d_initial
    assert energy_distance(results[40.0].samples, y) < 0.03


@pytest.mark.parametrize("params", [{"dim": 0}, {"dim": 2.5}, {"n_components": -1},
                                    {"dim": 65}, {"length": -3.0}, {"colour": 1}])
def test_invalid_parameters_are_rejected(params):
    with pytest.raises(ValueError):
        StationaryGMM.validate_params(params)


def test_the_stationarity_estimate_is_order_free_shrinks_with_t_and_vanishes_at_equal_masses():
    from tasks.stationary_gmm import mixture_energy_gap, mixture_symkl_gap

    task = StationaryGMM(np.random.SeedSequence(3), dim=2)
    late_first = StationaryGMM(np.random.SeedSequence(3), dim=2)
    early = [task.stationarity_gap(t) for t in (1.0, 4.0)]
    assert late_first.stationarity_gap(4.0) == early[1]
    assert late_first.stationarity_gap(1.0) == early[0]  # restarted: same stream
    assert early[1][1] <= early[0][1] + 0.02  # mode masses move towards equal weights
    rng = np.random.default_rng(0)
    equal = np.full(task.n_components, 1.0 / task.n_components)
    assert mixture_energy_gap(equal, task.centres, rng) == 0.0
    assert abs(mixture_symkl_gap(equal, task.centres, rng)) < 1e-12
    skewed = np.r_[0.6, np.full(task.n_components - 1, 0.4 / (task.n_components - 1))]
    assert mixture_energy_gap(skewed, task.centres, rng) > 0.01
    assert mixture_symkl_gap(skewed, task.centres, rng) > 0.05
    ref = task.reference(4.0)
    assert ref.error_estimate == early[1][0] and ref.extras["stationarity_symkl"] == early[1][2]


@pytest.mark.parametrize("dim, components, length", [(13, 10, 10.0), (32, 10, 6.0),
                                                     (64, 10, 4.0)])
def test_large_mixtures_have_the_study_sizes_and_a_consistent_sampler_and_density(
        dim, components, length):
    task = StationaryGMM(np.random.SeedSequence(0), dim=dim)
    assert (task.n_components, task.length) == (components, length)
    assert np.abs(task.centres).max() <= length / 2
    ref = task.reference(1.0)
    x = ref.sample(20000, np.random.default_rng(1))
    # density consistent with the sampler: E_q[log q] equals the mixture's entropy
    # estimate from an independent sample, and the density integrates to one along a
    # line through two centres (1-D quadrature of the restriction is not 1; use the
    # importance identity E_q[p/q] = 1 with p the first component)
    first = task.centres[0]
    log_first = -0.5 * np.sum((x - first) ** 2, axis=1) - 0.5 * dim * np.log(2 * np.pi)
    ratio = np.exp(log_first - ref.log_density(x))
    assert abs(ratio.mean() - 1.0) < 0.05
    # each sample's nearest centre holds ~1/M of them
    nearest = np.argmin(((x[:, None, :] - task.centres[None]) ** 2).sum(2), axis=1)
    assert np.abs(np.bincount(nearest, minlength=components) / len(x) - 1 / components).max() \
        < 0.02
