"""Tests of the SCVM solver: divergence, integrator, densities, a tiny OU fit, seeds, parameters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from solvers.base import RunContext
from numerics.dopri5 import OdeStats, dopri5_path
from numerics.velocity_net import (init_velocity_net, network_field, rk4_path, time_features,
                                   trajectory_at, velocity)
from solvers.scvm import DATA_TASK_MIN_ODE_STEPS, RK4_STEP_LAMBDA, Scvm, drift_stiffness, ibp_loss
from tasks.bayesian_logreg import BayesianLogReg
from tasks.filtering_1d import Filtering1D
from tasks.ou import OrnsteinUhlenbeck

#: a tiny configuration that fits 1-D and 2-D OU in a few seconds (lr above the default:
#: 160 iterations instead of 1000)
TINY = {"iters": 160, "batch_size": 512, "n_times": 6, "width": 32, "lr": 1e-2,
        "ode_steps": 8, "n_samples": 500}
#: task seed of the OU instances: a large b (1-D: A = 0.64, b = 2.16; 2-D: eigenvalues of A
#: 0.38 and 1.6), so the velocity is not small next to the network's error
TASK_SEED = 102


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (the machine is shared; the runner pins runs the same way)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_net(dim, width=16, seed=0, dtype=torch.float64):
    """A random network with non-zero biases and LayerNorm shifts (a generic point)."""
    gen = torch.Generator().manual_seed(seed)
    params = init_velocity_net(dim, width, 3, gen, dtype)
    with torch.no_grad():
        for key, value in params.items():
            if key.endswith(".b") or key.startswith("ln"):
                value.add_(0.3 * torch.randn(value.shape, generator=gen, dtype=dtype))
    return params


_TRAINED: dict = {}


def _trained(dim, times=(0.25, 0.5), solver_seed=1, **params):
    """A tiny SCVM run on OU (task seed ``TASK_SEED``), cached per configuration."""
    key = (dim, tuple(times), solver_seed, tuple(sorted(params.items())))
    if key not in _TRAINED:
        task = OrnsteinUhlenbeck(np.random.SeedSequence(TASK_SEED), dim=dim)
        solver = Scvm(**{**TINY, **params})
        solver.setup(task, list(times), np.random.SeedSequence(solver_seed), RunContext())
        _TRAINED[key] = task, solver, solver.run()
    return _TRAINED[key]


def test_divergence_in_the_forward_pass_equals_the_autograd_trace():
    dim = 4
    params = _random_net(dim)
    times = torch.tensor([0.0, 0.3, 0.8], dtype=torch.float64)
    x = torch.randn(3, 6, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    feats = time_features(params, times)
    v, div = velocity(params, x, feats, exact_div=True)
    xr = x.clone().requires_grad_(True)
    vr, _ = velocity(params, xr, feats)
    trace = sum(torch.autograd.grad(vr[..., d].sum(), xr, retain_graph=True)[0][..., d]
                for d in range(dim))
    # two implementations (fused LayerNorm without tangents): equal to rounding
    torch.testing.assert_close(v, vr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div, trace, rtol=1e-12, atol=1e-12)
    # Hutchinson with the unit vectors as probes is the exact trace / D; random probes
    # are unbiased (20000 probes: standard error ~ 0.02 here)
    _, div_unit = velocity(params, x, feats, probes=torch.eye(dim, dtype=torch.float64))
    torch.testing.assert_close(div_unit * dim, div, rtol=1e-12, atol=1e-12)
    probes = torch.randn(3, 6, 20000, dim, generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    _, div_mc = velocity(params, x, feats, probes=probes)
    assert float((div_mc - div).detach().abs().max()) < 0.15


def _relative_gap(first, second):
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(first, second) if a is not None)
    den = sum(float((b ** 2).sum()) for b in second if b is not None)
    return (num / den) ** 0.5


def test_ibp_loss_gradient_is_the_velocity_matching_gradient_on_a_gaussian():
    """E|v|² − 2E[v·b + div v] and E|v − b + ∇log ρ|² differ by a θ-free constant.

    ρ = N(0, I) in 2-D, its expectations taken on the product grid of 150 normal
    quantile midpoints (deterministic; the gap shrinks like 1/150: 0.0067 / 0.0045 /
    0.0034 at 100 / 150 / 200 points a side).
    """
    params = _random_net(2, seed=3)
    quantiles = torch.as_tensor(norm.ppf((np.arange(150) + 0.5) / 150))
    x = torch.stack(torch.meshgrid(quantiles, quantiles, indexing="ij"), -1).reshape(1, -1, 2)
    times = torch.tensor([0.4], dtype=torch.float64)
    drift = -0.5 * x + 0.2                        # some b; ∇log ρ = −x
    values = list(params.values())
    g_ibp = torch.autograd.grad(ibp_loss(params, x, times, drift, 1.0), values,
                                allow_unused=True)
    v, _ = velocity(params, x, time_features(params, times))
    g_direct = torch.autograd.grad(((v - drift - x) ** 2).sum(-1).mean(), values,
                                   allow_unused=True)
    assert _relative_gap(g_ibp, g_direct) < 0.01
    # without the score (plain drift matching) the gradients differ: the test can fail
    v, _ = velocity(params, x, time_features(params, times))
    g_no_score = torch.autograd.grad(((v - drift) ** 2).sum(-1).mean(), values,
                                     allow_unused=True)
    assert _relative_gap(g_ibp, g_no_score) > 0.1


def test_rk4_backward_integration_inverts_the_forward_one():
    params = _random_net(3, seed=5)
    x0 = torch.randn(50, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y, logp = rk4_path(params, x0, 0.0, 0.7, 40, torch.zeros(50, dtype=torch.float64))
    x_back, div_integral = rk4_path(params, y, 0.7, 0.0, 40,
                                    torch.zeros(50, dtype=torch.float64))
    torch.testing.assert_close(x_back, x0, rtol=0, atol=1e-6)
    # forward accumulates −∫div, backward +∫div (see Scvm.pull)
    torch.testing.assert_close(div_integral, -logp, rtol=0, atol=1e-6)
    # the log-density change is the log-determinant of the flow map (finite differences)
    eps = 1e-5
    cols = []
    for d in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[d] = eps
        plus, _ = rk4_path(params, x0[:1] + e, 0.0, 0.7, 40)
        minus, _ = rk4_path(params, x0[:1] - e, 0.0, 0.7, 40)
        cols.append((plus - minus)[0] / (2 * eps))
    logdet = torch.logdet(torch.stack(cols, 1))
    assert abs(float(logdet + logp[0])) < 1e-4


@pytest.mark.parametrize("dim,integrator", [(1, "dopri5"), (2, "dopri5"), (2, "rk4")])
def test_learned_velocity_is_close_to_the_exact_ou_velocity(dim, integrator):
    """Both training ODEs (adaptive Dopri5, the default, and the previous fixed-step RK4)."""
    task, solver, _ = _trained(dim, **({} if integrator == "dopri5" else
                                        {"integrator": integrator}))
    a, b = task.quadratic_potential()
    for t in (0.1, 0.25, 0.5):
        mean, cov = task.marginal(t)
        x = task.reference(t).sample(2000, np.random.default_rng(0))
        exact = -(x - b) @ a + (x - mean) @ np.linalg.inv(cov) / task.beta
        err = np.sqrt(((solver.velocity_at(t, x) - exact) ** 2).sum(1).mean()
                      / (exact ** 2).sum(1).mean())
        assert err < 0.3, (dim, t, err)  # measured: 1-D 0.08 / 0.013 / 0.15, 2-D 0.02-0.05


def test_log_density_is_normalised_and_close_to_the_exact_density():
    task, _, results = _trained(1)
    for t in (0.25, 0.5):
        mean, cov = task.marginal(t)
        sd = float(np.sqrt(cov[0, 0]))
        grid = np.linspace(mean[0] - 8 * sd, mean[0] + 8 * sd, 2001)
        p = np.exp(results[t].log_density(grid[:, None]))
        q = np.exp(task.reference(t).log_density(grid[:, None]))
        assert abs(np.trapezoid(p, grid) - 1.0) < 1e-2
        # ∫|p − q| = 2 TV; measured 0.016 / 0.006 at t = 0.25 / 0.5
        assert np.trapezoid(np.abs(p - q), grid) < 0.05


def test_draw_and_log_density_round_trip():
    _, solver, results = _trained(2)
    result = results[0.5]
    x, logp = result.draw(300, np.random.default_rng(3))
    assert x.shape == (300, 2) and x.dtype == np.float64 and logp.shape == (300,)
    # RK4 forward vs backward on one grid, float32: measured 2.5e-6 and 7e-7
    np.testing.assert_allclose(result.log_density(x), logp, rtol=0, atol=1e-4)
    # backward then forward returns the starting point
    x0, _ = solver.pull(x, 0.5)
    y, _ = solver.push(x0, 0.5)
    np.testing.assert_allclose(y, x, rtol=0, atol=1e-5)
    assert result.samples.shape == (500, 2) and np.isfinite(result.samples).all()
    assert set(results) == {0.25, 0.5}
    assert result.info["divergence"] == "exact" and len(result.info["loss_curve"]) > 0


def _tiny_samples(solver_seed, **params):
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=2)
    solver = Scvm(**{**TINY, "iters": 5, "width": 8, **params})
    solver.setup(task, [0.3], np.random.SeedSequence(solver_seed), RunContext())
    result = solver.run()[0.3]
    return result.samples, result.draw(50, np.random.default_rng(0))[0]


def test_runs_are_deterministic_under_a_seed_and_differ_between_seeds():
    first, second, other = _tiny_samples(5), _tiny_samples(5), _tiny_samples(6)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.allclose(first[1], other[1])


def test_hutchinson_and_float64_paths_run():
    samples, drawn = _tiny_samples(7, hutchinson=2, dtype="float64")
    assert np.isfinite(samples).all() and np.isfinite(drawn).all()


@pytest.mark.parametrize("bad", [{"iters": 0}, {"batch_size": 2.5}, {"n_times": 0},
                                 {"width": 1}, {"lr": -1.0}, {"lr": float("nan")},
                                 {"lr_final": 2.0}, {"ode_steps": 0}, {"dtype": "float16"},
                                 {"hutchinson": -1}, {"n_samples": True},
                                 {"data_batch_size": -5}, {"integrator": "euler"},
                                 {"ode_tol": 0.0}, {"ode_tol": 1.5}, {"ode_tol": True}])
def test_bad_parameters_raise_value_error(bad):
    with pytest.raises(ValueError):
        Scvm(**bad)


def test_filtering_tasks_are_skipped_with_a_reason():
    skip, reason = Scvm().skip(Filtering1D(np.random.SeedSequence(0)))
    assert skip and "observations" in reason
    assert Scvm().skip(OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=2)) == (False, "")


def test_data_tasks_need_fine_ode_steps_and_then_run_on_minibatches():
    task = BayesianLogReg(np.random.SeedSequence(0), dataset="synthetic")
    skip, reason = Scvm().skip(task)
    assert skip and "ode_steps" in reason
    solver = Scvm(iters=3, ode_steps=DATA_TASK_MIN_ODE_STEPS, batch_size=32, n_times=3,
                  width=8, n_samples=50, data_batch_size=64)
    assert solver.skip(task) == (False, "")
    batches = []
    original = task.data_batch
    task.data_batch = lambda size, rng: batches.append(size) or original(size, rng)
    solver.setup(task, [1.0], np.random.SeedSequence(0), RunContext())
    result = solver.run()[1.0]
    assert batches.count(64) >= 3            # a fresh minibatch every iteration
    assert result.samples.shape == (50, task.dim) and np.isfinite(result.samples).all()


def _stiff_ou(lam_max=150.0):
    """A 2-D OU instance with eigenvalues 1 and ``lam_max`` of A (rotated, b ≠ 0)."""
    task = OrnsteinUhlenbeck(np.random.SeedSequence(TASK_SEED), dim=2)
    c, s = np.cos(0.7), np.sin(0.7)
    rot = np.array([[c, -s], [s, c]])
    task.A = rot @ np.diag([1.0, lam_max]) @ rot.T
    task.eigval, task.eigvec = np.linalg.eigh(task.A)
    task._marginal.cache_clear()
    return task


def test_stiffness_estimate_is_the_largest_hessian_eigenvalue():
    for lam in (0.5, 13.0, 181.0):
        task = _stiff_ou(lam)
        estimate = drift_stiffness(task, np.random.default_rng(0))
        assert estimate == pytest.approx(max(lam, 1.0), rel=1e-4)


def _flow_mean_error(task, solver):
    """max |mean of the samples − m_t| at t = 0.5 (inf if the run blew up)."""
    try:
        samples = solver.run()[0.5].samples
    except FloatingPointError:
        return np.inf
    return float(np.abs(samples.mean(axis=0) - task.marginal(0.5)[0]).max())


def test_a_stiff_drift_gets_short_enough_rk4_steps_and_trains(monkeypatch):
    task = _stiff_ou(150.0)
    config = {**TINY, "iters": 40, "n_samples": 200, "lr": 3e-3, "integrator": "rk4"}
    solver = Scvm(**config)
    solver.setup(task, [0.5], np.random.SeedSequence(3), RunContext())
    assert solver.stiffness == pytest.approx(150.0, rel=1e-4)
    assert solver.steps_per_unit == np.ceil(solver.stiffness / RK4_STEP_LAMBDA) > 58
    # measured: 0.92 after 40 iterations
    assert _flow_mean_error(task, solver) < 3.0
    # the same run at the requested 8 steps per unit time (hλ ≈ 19) blows up (measured 7e10)
    monkeypatch.setattr("solvers.scvm.RK4_STEP_LAMBDA", float("inf"))
    unsafe = Scvm(**config)
    unsafe.setup(task, [0.5], np.random.SeedSequence(3), RunContext())
    assert unsafe.steps_per_unit == config["ode_steps"]
    assert _flow_mean_error(task, unsafe) > 1e3


def test_a_drift_too_stiff_for_the_step_cap_is_refused_in_setup_unless_asked_for():
    """λ = 2000 needs 800 steps per unit time > MAX_RAISED_STEPS: a clear error, no run."""
    from solvers.scvm import MAX_RAISED_STEPS

    task = _stiff_ou(2000.0)
    assert 2000.0 / RK4_STEP_LAMBDA > MAX_RAISED_STEPS
    with pytest.raises(ValueError, match=r"needs 80\d RK4 steps per unit time"):
        Scvm(**TINY).setup(task, [0.1], np.random.SeedSequence(3), RunContext())
    solver = Scvm(**{**TINY, "ode_steps": 1000})  # chosen by hand: accepted
    solver.setup(task, [0.1], np.random.SeedSequence(3), RunContext())
    assert solver.steps_per_unit == 1000


def test_results_carry_the_self_consistency_diagnostics():
    """A good OU flow is self-consistent (measured median residual 0.025, l2 1e-3)."""
    _, _, results = _trained(2)
    for result in results.values():
        diag = result.info["diagnostics"]
        assert set(diag) == {"ibp_loss", "ode_steps_per_unit", "self_consistency",
                             "self_consistency_l2"}
        assert diag["self_consistency"] < 0.1 and diag["self_consistency_l2"] < 0.01


def _previous_velocity(params, x, feats, probes=None, exact_div=False):
    """The velocity and divergence as computed before the fused path (the reference).

    Trunk by explicit LayerNorm arithmetic; tangents (…, P, width) with the mean over
    the units subtracted from them after each Dense, then the LayerNorm and SiLU
    Jacobians applied elementwise.
    """
    dim = x.shape[-1]
    w0 = params["h0.w"][:, :dim]
    h = x @ w0.T + feats.shift[:, None, :]
    tangent = w0.T if exact_div else (probes @ w0.T if probes is not None else None)
    for k in range(3):
        if k > 0:
            h = torch.nn.functional.linear(h, params[f"h{k}.w"], params[f"h{k}.b"])
            if tangent is not None:
                tangent = tangent @ params[f"h{k}.w"].T
        centred = h - h.mean(-1, keepdim=True)
        inv_std = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + 1e-6)
        normed = centred * inv_std
        gamma = params[f"ln{k}.g"]
        h = normed * gamma + params[f"ln{k}.b"]
        sig = torch.sigmoid(h)
        if tangent is not None:
            width = h.shape[-1]
            scale = inv_std * gamma * sig * (1.0 + h * (1.0 - sig))
            along = torch.einsum("...pw,...w->...p", tangent, normed) if tangent.dim() > 2 \
                else normed @ tangent.T
            tangent = (tangent - tangent.sum(-1, keepdim=True) / width
                       - normed.unsqueeze(-2) * (along / width).unsqueeze(-1)) \
                * scale.unsqueeze(-2)
        h = h * sig
    v = (torch.nn.functional.linear(h, params["out.w"], params["out.b"])
         + torch.einsum("tij,tbj->tbi", feats.skip, x) + feats.skip_bias[:, None, :])
    if tangent is None:
        return v, None
    if exact_div:
        div = (tangent * params["out.w"]).sum((-1, -2))
        return v, div + feats.skip.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None]
    jac_rows = tangent @ params["out.w"].T
    skip_rows = torch.einsum("tij,tbpj->tbpi", feats.skip,
                             probes.expand(*x.shape[:2], *probes.shape[-2:]))
    return v, ((jac_rows + skip_rows) * probes).sum(-1).mean(-1)


@pytest.mark.parametrize("dim", [1, 4])
def test_velocity_divergence_and_loss_gradients_equal_the_previous_path_in_float64(dim):
    """Centred weights, row-major tangents, fused LayerNorm: same values and gradients."""
    params = _random_net(dim)
    times = torch.tensor([0.0, 0.3, 0.8], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 7, dim, generator=gen, dtype=torch.float64)
    drift = torch.randn(3, 7, dim, generator=gen, dtype=torch.float64)
    probes = torch.randn(3, 7, 5, dim, generator=gen, dtype=torch.float64)
    shared = torch.randn(5, dim, generator=gen, dtype=torch.float64)
    feats = time_features(params, times)
    for kwargs in ({}, {"exact_div": True}, {"probes": probes}, {"probes": shared}):
        new, old = velocity(params, x, feats, **kwargs), _previous_velocity(
            params, x, feats, **kwargs)
        for a, b in zip(new, old):
            if b is not None:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for probe in (None, probes):
        grads = []
        for fn in (velocity, _previous_velocity):
            feats = time_features(params, times)
            v, div = fn(params, x, feats, probes=probe, exact_div=probe is None)
            loss = ((v * v).sum(-1) - 2.0 * ((v * drift).sum(-1) + div / 0.7)).mean()
            grads.append(torch.autograd.grad(loss, list(params.values())))
        for key, a, b in zip(params, *grads):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=key)


# ------------------------------------------------------------- the adaptive training ODE
def _linear_field(a):
    """x' = A x as a stage field (the stage times unused)."""
    return lambda stage_times: (lambda i, y: y @ a.T)


def _expm_flow(a, x0, times):
    return torch.stack([x0 @ torch.linalg.matrix_exp(a * float(t)).T for t in times])


def test_dopri5_meets_its_tolerance_on_a_linear_ode():
    """x' = A x (a damped rotation) against exp(tA) x0, at output times inside steps."""
    a = torch.tensor([[-0.5, 3.0], [-3.0, -0.5]], dtype=torch.float64)
    x0 = torch.randn(20, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    times = torch.tensor([0.05, 0.3, 0.31, 0.9, 1.7, 2.0], dtype=torch.float64)
    exact = _expm_flow(a, x0, times)
    steps = []
    for tol in (1e-4, 1e-6, 1e-8):
        stats = OdeStats()
        out = dopri5_path(_linear_field(a), x0, times, rtol=tol, atol=tol, stats=stats)
        err = float((out - exact).abs().max())
        # global error of the order of the local tolerance (measured 1.7-1.8 × tol)
        assert err < 10 * tol, (tol, err)
        steps.append(stats.accepted)
    # the work follows the tolerance, about tol^(-1/5) (measured 11, 25, 60 steps)
    assert steps[0] < steps[1] < steps[2] and steps[0] <= 15


def test_dopri5_continuous_extension_is_fourth_order():
    """One step of length h read at 0.37 h: the local error falls ~ h^5 (×32 per halving)."""
    a = torch.tensor([[0.0, 1.0], [-4.0, 0.0]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    errors = []
    for h in (0.4, 0.2, 0.1):
        stats = OdeStats()
        times = torch.tensor([0.37 * h, h], dtype=torch.float64)
        out = dopri5_path(_linear_field(a), x0, times, rtol=1e6, atol=1e6, first_step=h,
                          stats=stats)
        assert stats.accepted == 1
        errors.append(float((out - _expm_flow(a, x0, times)).abs().max()))
    # measured ratios 23 and 29
    assert errors[0] / errors[1] > 16 and errors[1] / errors[2] > 16


def test_dopri5_controls_a_stiff_step_and_stops_a_blow_up():
    """λ = −300: explicit steps must stay below ≈ 3.3/300; the controller finds them."""
    a = torch.tensor([[-300.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    x0 = torch.ones(3, 2, dtype=torch.float64)
    times = torch.tensor([0.5, 1.0], dtype=torch.float64)
    stats = OdeStats()
    out = dopri5_path(_linear_field(a), x0, times, stats=stats)
    assert float((out - _expm_flow(a, x0, times)).abs().max()) < 1e-3
    # stability needs > 300 / 3.3 ≈ 91 steps over t ∈ [0, 1] (measured 97 and 23 rejected)
    assert stats.accepted > 85 and stats.rejected > 0
    # a flow that blows up in finite time (x' = x², x0 = 1: at t = 1) is refused
    with pytest.raises(FloatingPointError, match="step attempts"):
        dopri5_path(lambda ts: (lambda i, y: y * y), x0, times + 0.5, max_steps=200)


def test_dopri5_on_the_network_agrees_with_fine_rk4():
    """The stage field (time features once per step) against RK4 at 400 steps per unit."""
    params = _random_net(3, seed=8)
    x0 = torch.randn(40, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    times = torch.tensor([0.13, 0.4, 0.41, 1.0], dtype=torch.float64)
    fine = trajectory_at(params, x0, times, 400.0)
    stats = OdeStats()
    out = dopri5_path(network_field(params), x0, times, rtol=1e-6, atol=1e-6, stats=stats)
    assert float((out - fine).abs().max()) < 1e-5
    assert stats.first_step is not None and stats.first_step > 0


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_hand_written_backward_equals_autograd_in_float64(dim):
    """The default exact-divergence path (custom backward) against the autograd one."""
    params = _random_net(dim, seed=dim)
    times = torch.tensor([0.0, 0.2, 0.9], dtype=torch.float64)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 9, dim, generator=gen, dtype=torch.float64)
    drift = torch.randn(3, 9, dim, generator=gen, dtype=torch.float64)
    outputs = []
    for fused in (True, False):
        feats = time_features(params, times)
        v, div = velocity(params, x, feats, exact_div=True, fused=fused)
        loss = ((v * v).sum(-1) - 2.0 * ((v * drift).sum(-1) + div / 0.7)).mean()
        outputs.append([v, div, *torch.autograd.grad(loss, list(params.values()))])
    for key, a, b in zip(["v", "div", *params], *outputs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12, msg=key)


def test_training_reports_the_adaptive_ode_work():
    _, solver, results = _trained(2)
    info = next(iter(results.values())).info
    assert info["ode"].startswith("training dopri5") and "rk4" in info["ode"]
    assert solver.ode_stats.accepted >= TINY["iters"]
