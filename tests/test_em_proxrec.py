"""Proximal recursion: fixed-point properties, Gibbs limit, density, determinism."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.symkl import symkl_mc
from solvers.base import RunContext
from solvers.em_proxrec import (ProximalRecursion, proximal_step, weight_memory,
                                weighted_particle_law)
from tasks.base import Task, gaussian_log_density
from tasks.ou import OrnsteinUhlenbeck


class DoubleWell(Task):
    """1-D double well Φ(x) = (x² − 1)², β = 1, ρ0 = N(1, 0.5²) (test only)."""

    name = "double_well_test"
    version = "0"

    def __init__(self, seed):
        super().__init__(seed)
        self.dim, self.beta = 1, 1.0

    def potential(self, x):
        return (x[:, 0] ** 2 - 1.0) ** 2

    def grad_potential(self, x):
        return 4.0 * x * (x ** 2 - 1.0)

    def potential_torch(self, x, batch=None):
        return (x[:, 0] ** 2 - 1.0) ** 2

    def sample_initial(self, n, rng):
        return 1.0 + 0.5 * rng.standard_normal((n, 1))

    def log_density_initial(self, x):
        return gaussian_log_density(x, np.ones(1), 0.25 * np.eye(1))

    def reference(self, t):
        raise NotImplementedError


def run_solver(task, times, entropy=1, **params):
    solver = ProximalRecursion(**params)
    solver.setup(task, times, np.random.SeedSequence(entropy), RunContext())
    return solver, solver.run()


def test_weights_relax_to_the_gibbs_density_on_a_double_well(monkeypatch):
    # capture the raw log weights handed to the density builder
    import solvers.em_proxrec as module

    captured = {}
    original = module.weighted_particle_law

    def spy(x, log_rho, rng, info):
        captured[info["steps"]] = (x, log_rho)
        return original(x, log_rho, rng, info)

    monkeypatch.setattr(module, "weighted_particle_law", spy)
    task = DoubleWell(np.random.SeedSequence(0))
    solver, _ = run_solver(task, [0.5, 4.0], n_particles=200, dt=0.01)
    # log w + βΦ is constant iff w ∝ exp(−βΦ)
    spread = {k: np.std(lr + task.potential(x)) for k, (x, lr) in captured.items()}
    initial = np.std(solver.log_rho0 + task.potential(solver.x0))
    assert initial > 1.5
    assert spread[50] > 0.4  # not yet relaxed at t = 0.5
    assert spread[400] < 0.3  # relaxed at t = 4 (measured 0.18)
    x, log_rho = captured[400]
    assert np.corrcoef(log_rho, -task.potential(x))[0, 1] > 0.95


def test_fixed_point_conserves_mass_and_survives_where_the_linear_kernel_underflows():
    rng = np.random.default_rng(0)
    dim, n = 12, 50
    x_prev = torch.as_tensor(6.0 * rng.standard_normal((n, dim)))
    x_new = x_prev + 0.05 * torch.as_tensor(rng.standard_normal((n, dim)))
    # distinct particles are ~ 800 apart in squared distance: exp(-C/2ε) == 0 in float64
    linear = torch.exp(-torch.cdist(x_prev, x_new) ** 2 / 0.1).fill_diagonal_(0)
    assert float(linear.max()) == 0.0
    log_rho_prev = torch.as_tensor(rng.normal(-20.0, 3.0, n))
    log_xi = torch.as_tensor(-rng.random(n) - 1.0)
    log_rho, _, n_iter, converged = proximal_step(
        log_rho_prev, x_prev, x_new, log_xi, torch.zeros(n), h=1e-3, eps=0.05, beta=1.0,
        tol=1e-10, max_iter=300)
    assert converged and n_iter < 300
    assert torch.isfinite(log_rho).all()
    # Σρ^k = Σρ^{k−1} at the fixed point (the transport plan's two marginals)
    assert float(torch.logsumexp(log_rho, 0)) == pytest.approx(
        float(torch.logsumexp(log_rho_prev, 0)), abs=1e-8)
    # a (numerically) diagonal Γ freezes the weights: the high-D breakdown
    np.testing.assert_allclose(log_rho.numpy(), log_rho_prev.numpy(), atol=1e-6)


def test_weights_tend_to_xi_as_the_step_grows():
    rng = np.random.default_rng(1)
    x_prev = torch.as_tensor(rng.standard_normal((40, 1)))
    x_new = x_prev + 0.1
    log_rho_prev = torch.as_tensor(rng.normal(0.0, 1.0, 40))
    log_xi = torch.as_tensor(-rng.random(40))
    # the fixed point gives ρ^k = ξ · z^(−βε/h): ρ^k ∝ ξ as h → ∞
    spreads = []
    for h in (1e-3, 0.1, 1.0, 10.0):
        log_rho, _, _, converged = proximal_step(
            log_rho_prev, x_prev, x_new, log_xi, torch.zeros(40), h=h, eps=0.05, beta=1.0,
            tol=1e-10, max_iter=20000)
        assert converged
        spreads.append(np.ptp((log_rho - log_xi).numpy()))
    assert all(a > b for a, b in zip(spreads, spreads[1:]))
    assert spreads[-1] < 0.05 * np.ptp((log_rho_prev - log_xi).numpy())


def test_density_is_normalised_and_draw_matches_it():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 1))
    log_rho = -0.5 * x[:, 0] ** 2 + rng.normal(0, 0.3, 300)  # noisy density values
    result = weighted_particle_law(x, log_rho, rng, {})
    grid = np.linspace(-8.0, 8.0, 4001)[:, None]
    mass = np.trapezoid(np.exp(result.log_density(grid)), grid[:, 0])
    assert mass == pytest.approx(1.0, abs=1e-6)
    points, logp = result.draw(500, np.random.default_rng(3))
    np.testing.assert_allclose(logp, result.log_density(points))
    assert result.samples.shape == x.shape and 0 < result.info["n_eff"] <= 300


def test_ou_1d_density_is_close_to_the_closed_form():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(5), dim=1)
    _, results = run_solver(task, [0.2], n_particles=300)
    value = symkl_mc(results[0.2], task.reference(0.2), rng=np.random.default_rng(0)).value
    assert 0.0 < value < 0.1


def test_weight_memory_flags_frozen_weights_in_high_dimension():
    memory = {}
    for dim in (1, 12):
        task = OrnsteinUhlenbeck(np.random.SeedSequence(5), dim=dim)
        _, results = run_solver(task, [0.05], n_particles=100)
        memory[dim] = results[0.05].info["weight_memory"]
    # Γ is numerically diagonal at D = 12: the weights stay ρ0(x_i^0) (measured 1.0 vs 0.84)
    assert memory[12] > 0.99 > 0.95 > memory[1]
    assert np.isnan(weight_memory(np.ones(5), np.arange(5.0)))


def test_same_seed_same_output_other_seed_other_output():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(5), dim=2)
    points = np.random.default_rng(9).standard_normal((20, 2))
    _, a = run_solver(task, [0.02], n_particles=100, warm_start=False)
    _, b = run_solver(task, [0.02], n_particles=100, warm_start=False)
    _, c = run_solver(task, [0.02], entropy=2, n_particles=100, warm_start=False)
    np.testing.assert_array_equal(a[0.02].samples, b[0.02].samples)
    np.testing.assert_array_equal(a[0.02].log_density(points), b[0.02].log_density(points))
    assert not np.array_equal(a[0.02].samples, c[0.02].samples)


@pytest.mark.parametrize("params", [{"n_particles": 0}, {"n_particles": 10.5},
                                    {"epsilon": -0.1}, {"dt": 0.0}, {"tol": float("nan")},
                                    {"max_iter": 2.5}, {"warm_start": "yes"}])
def test_bad_parameters_are_rejected(params):
    with pytest.raises(ValueError):
        ProximalRecursion(**params)
