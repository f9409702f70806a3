"""Tests of the SBTM solver: closed forms, the linear score part, OU accuracy, densities, seeds."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from numerics.score_net import (
    Adam,
    fit_linear_part,
    fused_ism_applies,
    init_network,
    ism_loss,
    ism_value_and_grad,
    mlp_part,
    score_terms,
)
from solvers.base import RunContext
from solvers.sbtm import Sbtm
from tasks.base import gaussian_log_density
from tasks.ou import OrnsteinUhlenbeck

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (the machine is shared; the runner pins runs the same way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _solve(dim, times, task_seed=1, seed=5, device="cpu", **params):
    """(task, solver, results) of SBTM on OU in ``dim`` dimensions."""
    task = OrnsteinUhlenbeck(np.random.SeedSequence(task_seed), dim=dim)
    solver = Sbtm(**params)
    solver.setup(task, times, np.random.SeedSequence(seed), RunContext(device=device))
    return task, solver, solver.run()


def _random_net(dim, depth, quadratic, seed=0):
    """float64 network with an O(1) output layer and, if asked, a random linear part."""
    gen = torch.Generator().manual_seed(seed)
    params = init_network(dim, 16, depth, quadratic, gen, torch.float64)
    with torch.no_grad():  # an output layer of size O(1) and a non-zero linear part
        params["a"].mul_(10.0)
        if quadratic:
            params["Q"].copy_(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
            params["q"].copy_(torch.randn(dim, generator=gen, dtype=torch.float64))
    return params


def _autograd_potential(params, x):
    """U by plain torch modules (independent of score_terms)."""
    h = torch.nn.functional.silu(x @ params["W0"].T + params["c0"])
    for layer in range(1, sum(k.startswith("W") for k in params)):
        h = h + torch.nn.functional.silu(h @ params[f"W{layer}"].T + params[f"c{layer}"])
    u = h @ params["a"]
    if "Q" in params:
        sym = 0.5 * (params["Q"] + params["Q"].T)
        u = u + 0.5 * ((x @ sym) * x).sum(1) + x @ params["q"]
    return u


@pytest.mark.parametrize("depth,quadratic", [(1, False), (1, True), (3, True)])
def test_closed_form_score_divergence_and_hessian_equal_autograd(depth, quadratic):
    """s, div s, ∇s and the divergence's parameter gradient equal autograd; Hutchinson's mean."""
    dim = 4
    params = _random_net(dim, depth, quadratic)
    x = torch.randn(9, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (s_ref,) = torch.autograd.grad(_autograd_potential(params, xr).sum(), xr, create_graph=True)
    h_ref = torch.stack([torch.autograd.grad(s_ref[:, d].sum(), xr, create_graph=True)[0]
                         for d in range(dim)], 1)
    score, div, hess = score_terms(params, x, divergence=True, hessian=True)
    torch.testing.assert_close(score, s_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hess, h_ref, rtol=1e-12, atol=1e-12)
    trace_ref = h_ref.diagonal(dim1=1, dim2=2).sum(1)
    torch.testing.assert_close(div, trace_ref, rtol=1e-12, atol=1e-12)
    # the ISM loss is differentiated through the closed form: same parameter gradients
    g_fast = torch.autograd.grad(div.sum(), params["W0"], retain_graph=True)[0]
    g_ref = torch.autograd.grad(trace_ref.sum(), params["W0"])[0]
    torch.testing.assert_close(g_fast, g_ref, rtol=1e-10, atol=1e-12)
    # Hutchinson: unbiased, the mean over many probes approaches the trace
    probes = torch.randn(9, dim, 20000, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    _, div_h, _ = score_terms(params, x, probes, divergence=True)
    frob = hess.pow(2).sum((1, 2)).sqrt()
    assert bool(((div_h - div).abs() < 5 * frob * (2.0 / 20000) ** 0.5).all())


def test_linear_part_solves_the_ism_least_squares():
    """The Lyapunov solve gives the Gaussian score, and the ISM loss is stationary there."""
    dim = 3
    gen = torch.Generator().manual_seed(3)
    scales = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    x = torch.randn(500, dim, generator=gen, dtype=torch.float64) * scales
    # without a network part the optimum is the Gaussian score of the particles
    params = _random_net(dim, 1, True)
    with torch.no_grad():
        params["a"].zero_()
    fit_linear_part(params, x)
    mean, cov = x.mean(0), torch.cov(x.T, correction=0)
    torch.testing.assert_close(params["Q"], -torch.linalg.inv(cov), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(params["q"], torch.linalg.solve(cov, mean), rtol=1e-9, atol=1e-9)
    # with a network part: the ISM loss is stationary in the (symmetric) linear part
    params = _random_net(dim, 2, True)
    fit_linear_part(params, x)
    q_mat = params["Q"].detach().clone().requires_grad_(True)
    q_vec = params["q"].detach().clone().requires_grad_(True)
    loss = ism_loss(dict(mlp_part(params), Q=q_mat, q=q_vec), x, None)
    g_mat, g_vec = torch.autograd.grad(loss, [q_mat, q_vec])
    # zero up to the 1e-10 ridge that keeps the covariance invertible
    assert float((g_mat + g_mat.T).abs().max()) < 1e-7 and float(g_vec.abs().max()) < 1e-7


@pytest.mark.parametrize("dim", [1, 2])
def test_learned_velocity_is_close_to_the_exact_ou_velocity(dim):
    """−∇Φ − β⁻¹s_t against the exact OU velocity on points from ρ_t."""
    task, solver, _ = _solve(dim, [0.6])
    a, b = task.quadratic_potential()
    for t in (0.1, 0.3, 0.5):
        mean, cov = task.marginal(t)
        x = task.reference(t).sample(2000, np.random.default_rng(1))
        exact = -(x - b) @ a + task.beta ** -1 * (x - mean) @ np.linalg.inv(cov)
        learned = solver.learned_velocity(round(t / solver.dt), x)
        rel = np.sqrt(((learned - exact) ** 2).sum() / (exact ** 2).sum())
        # measured 0.06-0.08 (D = 1) and 0.02-0.05 (D = 2) on task seed 1: the sampling
        # error of 2000 particles
        assert rel < 0.1, f"t={t}: relative L2 velocity error {rel:.3f}"


def test_density_is_normalised_and_close_to_the_exact_ou_law_1d():
    """Trapezoid mass on a wide grid is 1 (the discrete change of variables is exact)."""
    task, _, results = _solve(1, [0.5, 1.0], task_seed=100)
    for t in (0.5, 1.0):
        mean, cov = task.marginal(t)
        grid = np.linspace(mean[0] - 12.0, mean[0] + 12.0, 4001)
        logp = results[t].log_density(grid[:, None])
        p = np.exp(logp)
        q = np.exp(gaussian_log_density(grid[:, None], mean, cov))
        mass = np.trapezoid(p, grid)
        assert abs(mass - 1.0) < 1e-2, f"t={t}: mass {mass}"
        symkl = np.trapezoid((p - q) * (logp - np.log(q)), grid)
        # measured 6e-4 / 1.7e-3 (a Gaussian fitted to 2000 particles: ~2.5e-4)
        assert symkl < 5e-3, f"t={t}: SymKL {symkl}"
    assert results[1.0].info["density_diagnostics"]["unconverged_inversions"] == 0


@pytest.mark.parametrize("dim", [2, 3])
def test_backward_integration_inverts_the_forward_maps(dim):
    """log_density at drawn points equals draw's log-density; particles pull back to X_0."""
    _, solver, results = _solve(dim, [0.3], n_particles=500)
    res = results[0.3]
    x, logp = res.draw(300, np.random.default_rng(4))
    np.testing.assert_allclose(res.log_density(x), logp, rtol=0, atol=1e-8)
    # the solver's own particles are pushed by the same Euler maps: pulling them back
    # returns the initial particles
    x0, _ = solver.pull_back(30, res.samples)
    assert np.abs(x0 - solver.x0).max() < 1e-6  # float32 particles, float64 maps
    assert res.info["density_diagnostics"] == {"density_folds": 0, "unconverged_inversions": 0}


def test_hutchinson_log_determinant_and_fixed_point_inversion():
    """The D > exact_dim path on the same networks: fixed point = Newton, log det unbiased."""
    _, solver, results = _solve(3, [0.2], n_particles=500)
    y = results[0.2].draw(64, np.random.default_rng(6))[0]
    x0_exact, logdet_exact = solver.pull_back(20, y)
    solver.exact = False  # the same networks through the D > exact_dim path
    solver.params = dict(solver.params, hutchinson=400)
    x0_fp, logdet_h = solver.pull_back(20, y)
    assert np.abs(x0_fp - x0_exact).max() < 1e-9
    # unbiased up to O(dt^3) per step, noise of variance 2 dt t ||J||_F^2 / probes: its
    # standard deviation is measured 0.008 here, the mean over 64 points within 3e-3
    error = logdet_h - logdet_exact
    assert np.abs(error).max() < 5e-2 and abs(error.mean()) < 4e-3


def test_same_seed_same_results_other_seed_different():
    """Every generator comes from the SeedSequence."""
    def run(seed):
        """Particles, a draw and log-densities of one small run."""
        _, _, results = _solve(2, [0.1], seed=seed, n_particles=300)
        res = results[0.1]
        x, logp = res.draw(50, np.random.default_rng(0))
        return res.samples, x, logp, res.log_density(x[:10])

    first, again, other = run(11), run(11), run(12)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], other[0])
    assert not np.allclose(first[1], other[1])


@pytest.mark.parametrize("loss", ["dsm", "ism"])
def test_other_losses_and_double_precision_run(loss):
    """DSM and float64 training give a sane 1-D law (SymKL on a grid)."""
    task, _, results = _solve(1, [0.3], task_seed=100, n_particles=1000, loss=loss,
                              dtype="float64", inner_steps=20, lr=1e-3)
    mean, cov = task.marginal(0.3)
    grid = np.linspace(-10.0, 10.0, 2001)
    logp = results[0.3].log_density(grid[:, None])
    q = gaussian_log_density(grid[:, None], mean, cov)
    assert np.trapezoid((np.exp(logp) - np.exp(q)) * (logp - q), grid) < 1e-2


@pytest.mark.parametrize("bad", [
    {"n_particles": 0}, {"n_particles": 1}, {"n_particles": 10.5}, {"dt": 0.0},
    {"dt": float("nan")}, {"width": -1}, {"depth": 0}, {"lr": -1e-3}, {"inner_steps": -1},
    {"init_steps": 2.5}, {"loss": "sliced"}, {"noise": 0.0}, {"dtype": "float16"},
    {"hutchinson": 0}, {"exact_dim": -1}, {"quadratic": "yes"}, {"init_lr": 0},
])
def test_validate_params_rejects_bad_values(bad):
    """Bad parameter values are a ValueError at construction."""
    with pytest.raises(ValueError):
        Sbtm(**bad)


def test_skips_filtering_and_logistic_regression_but_not_ou():
    """Observations and BLR are skipped with a reason; OU is not."""
    solver = Sbtm()
    skip, reason = solver.skip(SimpleNamespace(name="filtering_1d", observations=(1,)))
    assert skip and "observations" in reason
    skip, reason = solver.skip(SimpleNamespace(name="bayesian_logreg", observations=()))
    assert skip and "dt" in reason
    assert solver.skip(OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=2)) == (False, "")


@pytest.mark.skipif(len(DEVICES) == 1, reason="no CUDA device")
def test_cuda_run_matches_the_cpu_law():
    """On CUDA: draw / log_density consistent, and the same law as on the CPU."""
    _, _, gpu = _solve(2, [0.2], device="cuda", n_particles=500)
    _, _, cpu = _solve(2, [0.2], device="cpu", n_particles=500)
    x, logp = gpu[0.2].draw(200, np.random.default_rng(3))
    np.testing.assert_allclose(gpu[0.2].log_density(x), logp, atol=1e-8)
    # different random streams on the device: the same law up to sampling error
    np.testing.assert_allclose(cpu[0.2].log_density(x), logp, atol=0.1)


def _previous_ism_loss(params, x):
    """The ISM loss as it was computed before the fused path: the closed-form sweep of
    score_terms differentiated by autograd (kept as the reference)."""
    score, div, _ = score_terms(params, x, divergence=True)
    return (score * score).sum(1).mean() + 2.0 * div.mean()


@pytest.mark.parametrize("dim,quadratic", [(1, False), (3, True), (12, True)])
def test_fused_one_layer_ism_equals_the_previous_path_in_float64(dim, quadratic):
    """OneLayerIsm (autograd Function) and ism_value_and_grad: same loss and gradients."""
    params = _random_net(dim, 1, quadratic)
    x = torch.randn(257, dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    trained = mlp_part(params)
    reference = _previous_ism_loss(params, x)
    grads_ref = torch.autograd.grad(reference, list(trained.values()))
    fused = ism_loss(params, x, None)
    grads_fused = torch.autograd.grad(fused, list(trained.values()))
    value, grads_direct = ism_value_and_grad(params, x)
    torch.testing.assert_close(fused, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)
    for key, g_ref, g_fused in zip(trained, grads_ref, grads_fused):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(grads_direct[key], g_ref, rtol=1e-10, atol=1e-12)


def test_fused_path_is_taken_only_where_it_applies():
    """Two layers, or a differentiated linear part, keep the autograd sweep."""
    assert fused_ism_applies(_random_net(2, 1, True))
    assert fused_ism_applies(_random_net(2, 1, False))
    assert not fused_ism_applies(_random_net(2, 2, True))
    params = _random_net(2, 1, True)
    params["Q"].requires_grad_(True)
    assert not fused_ism_applies(params)


def test_adam_is_bit_identical_to_torch_adam():
    """The solver's Adam reproduces torch.optim.Adam (CPU single-tensor path) exactly."""
    params = _random_net(3, 2, False)
    copy = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ours = Adam(params, lr=1e-2)
    theirs = torch.optim.Adam(list(copy.values()), lr=1e-2)
    for _ in range(7):
        grads = torch.autograd.grad(_previous_ism_loss(params, x), list(params.values()))
        ours.step(dict(zip(params, grads)))
        theirs.zero_grad()
        _previous_ism_loss(copy, x).backward()
        theirs.step()
    for key in params:
        torch.testing.assert_close(params[key], copy[key], rtol=0, atol=0)
