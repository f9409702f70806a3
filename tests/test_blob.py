"""The blob method (solvers/blob.py): its velocity is the gradient of its energy, and it tracks
the Barenblatt profile, the heat flow of OU and the new free-energy tasks."""
from __future__ import annotations

import numpy as np
import pytest

from solvers.base import RunContext
from solvers.blob import MAX_DIM, Blob, blob_width, diffusion_velocity
from tasks.aggregation import Aggregation
from tasks.free_energy import ALL_TERMS, unsupported_terms
from tasks.moving_trap import MovingTrap
from tasks.ou import OrnsteinUhlenbeck
from tasks.porous_medium import PorousMedium


def run_blob(task, times, entropy=1, **params):
    solver = Blob(**params)
    assert solver.skip(task) == (False, "")
    solver.setup(task, list(times), np.random.SeedSequence(entropy), RunContext())
    return solver, solver.run()


@pytest.mark.parametrize("m", [1.0, 2.0, 3.0])
def test_velocity_is_minus_the_weighted_gradient_of_the_blob_energy(m):
    """v_i = −(1/w_i)∂U_ε/∂x_i by autograd.

    U_ε = Σ_i w_i ρ_i^{m−1}/(m − 1) (m = 1: Σ_i w_i log ρ_i), ρ_i = Σ_j w_j φ_ε(x_i − x_j).
    """
    import torch

    rng = np.random.default_rng(int(m))
    n, dim, eps = 40, 3, 0.4
    x = rng.standard_normal((n, dim))
    w = rng.dirichlet(np.ones(n))
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w)
    sq = ((xt[:, None, :] - xt[None, :, :]) ** 2).sum(-1)
    rho = (torch.exp(-sq / (2 * eps ** 2)) * wt[None, :]).sum(1) / (2 * np.pi * eps ** 2) ** 1.5
    energy = (wt * torch.log(rho)).sum() if m == 1.0 else (wt * rho ** (m - 1)).sum() / (m - 1)
    (grad,) = torch.autograd.grad(energy, xt)
    expected = -grad.numpy() / w[:, None]
    np.testing.assert_allclose(diffusion_velocity(x, w, eps, m), expected, rtol=1e-9, atol=1e-12)


def test_blob_width_follows_the_density_estimation_rate():
    x = np.random.default_rng(0).standard_normal((4000, 2)) * 3.0
    assert blob_width(x, 1.0) == pytest.approx(3.0 * 4000 ** (-1 / 6), rel=0.03)
    assert blob_width(x, 2.0) == pytest.approx(2 * blob_width(x, 1.0))


def test_supports_every_term_but_skips_high_dimension():
    assert Blob.supports == ALL_TERMS
    seed = np.random.SeedSequence(0)
    for task in (PorousMedium(seed, dim=2), MovingTrap(seed, dim=2), Aggregation(seed, dim=2)):
        assert unsupported_terms(task, Blob) == ()
    skip, reason = Blob().skip(MovingTrap(np.random.SeedSequence(0), dim=MAX_DIM + 1))
    assert skip and str(MAX_DIM) in reason


@pytest.mark.parametrize("dim,m", [(1, 2.0), (2, 3.0)])
def test_blob_tracks_the_barenblatt_profile(dim, m):
    task = PorousMedium(np.random.SeedSequence(0), dim=dim, m=m)
    _, results = run_blob(task, task.default_times, n_particles=500)
    for t in task.default_times:
        x = results[t].samples
        r = np.linalg.norm(x - task.centre, axis=1)
        var = np.trace(task.reference(t).moments[1])
        # measured (N = 500): E|x − c|² 0.2 … 1.7 % (D = 1) and 1.7 … 3.2 % (D = 2, m = 3)
        # below the profile's, every particle inside the support (≤ 0.96 R); the same
        # particles under linear diffusion (m = 1) fail both checks
        assert np.mean(r ** 2) == pytest.approx(var, rel=0.04)
        assert r.max() <= 1.02 * task.support_radius(t)
    # the spreading law: the profile at the last time is far wider than at the start
    assert np.trace(task.reference(task.default_times[-1]).moments[1]) > 2 * np.trace(
        task.reference(0.0).moments[1])


def test_blob_heat_flow_matches_the_ou_moments_of_its_own_initial_particles():
    """The method is deterministic: it carries the initial draw's sampling error, so it is
    judged against the 1-D OU moment flow started from its own particles' mean and variance."""
    task = OrnsteinUhlenbeck(np.random.SeedSequence(2), dim=1)
    solver, results = run_blob(task, (0.5, 1.0), n_particles=500)
    a, b = task.A[0, 0], task.b[0]
    m0, v0 = solver.x0[:, 0].mean(), solver.x0[:, 0].var()
    for t in (0.5, 1.0):
        x = results[t].samples[:, 0]
        mean = b + np.exp(-a * t) * (m0 - b)
        var = np.exp(-2 * a * t) * (v0 - 1 / a) + 1 / a
        # measured: 0.4 % off in variance, 6e-4 sd in the mean
        assert x.mean() == pytest.approx(mean, abs=0.02 * np.sqrt(var))
        assert x.var() == pytest.approx(var, rel=0.015)


def test_blob_on_the_moving_trap_and_aggregation():
    trap = MovingTrap(np.random.SeedSequence(3), dim=2)
    _, res = run_blob(trap, (1.0,), n_particles=400)
    mean, cov = trap.marginal(1.0)
    np.testing.assert_allclose(res[1.0].samples.mean(axis=0), mean, atol=0.1)
    agg = Aggregation(np.random.SeedSequence(3), dim=2)
    _, res = run_blob(agg, (0.5,), n_particles=400)
    mean, cov = agg.marginal(0.5)
    np.testing.assert_allclose(np.cov(res[0.5].samples.T), cov, atol=0.1 * np.abs(cov).max())


def test_mollified_output_is_a_normalised_density_with_matching_draws():
    task = PorousMedium(np.random.SeedSequence(0), dim=1, m=2.0)
    solver, results = run_blob(task, (0.02,), n_particles=200, output="mollified")
    res = results[0.02]
    assert res.law == "iid_density"
    grid = np.linspace(-2.0, 3.0, 20001)[:, None]
    assert np.trapezoid(np.exp(res.log_density(grid)), grid[:, 0]) == pytest.approx(1.0, abs=1e-8)
    y, logp = res.draw(20000, np.random.default_rng(0))
    np.testing.assert_allclose(logp, res.log_density(y))
    # the mixture's variance is the particles' plus ε²
    assert y.var() == pytest.approx(res.samples.var() + solver.eps ** 2, rel=0.05)
