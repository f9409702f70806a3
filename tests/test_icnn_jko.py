"""Tests of the ICNN-JKO solver: closed forms, convexity, inversion, densities, a tiny OU run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metrics.symkl import SYMKL, SYMKL_GRID, symkl_from_logs
from solvers.base import RunContext, SolverResult
from numerics.icnn import (icnn_grad_hess, icnn_potential, init_icnn, logdet_pd, naive_grad_hess)
from numerics.icnn_maps import (invert_map, pull_back, push)
from solvers.icnn_jko import IcnnJko, independence_mh, jko_loss, mh_iterations
from tasks.aggregation import Aggregation
from tasks.base import Reference, Task, gaussian_log_density, gaussian_sampler
from tasks.filtering_1d import Filtering1D
from tasks.free_energy import DEFAULT_TERMS, skip_reason, unsupported_terms
from tasks.moving_trap import MovingTrap
from tasks.ou import OrnsteinUhlenbeck
from tasks.porous_medium import PorousMedium

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_net(dim=12, width=64, rank=5, seed=0, dtype=torch.float64, device="cpu"):
    """A random network with non-zero biases (so the softplus is not at a trivial point)."""
    gen = torch.Generator().manual_seed(seed)
    params = init_icnn(dim, width, rank, gen, dtype, device)
    with torch.no_grad():
        for key in ("b1", "b2"):
            params[key].copy_(torch.randn(width, generator=gen, dtype=torch.float64))
    return params


def _points(n, dim, seed=1, dtype=torch.float64, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, dim, generator=gen, dtype=torch.float64).to(dtype)


def _ou_quadratic(task):
    return lambda y: task.potential_torch(y)


def test_closed_form_gradient_and_hessian_equal_autograd():
    params = _random_net()
    x = _points(64, 12)
    grad, hess = icnn_grad_hess(params, x, 1e-6)
    grad_ref, hess_ref = naive_grad_hess(params, x, 1e-6)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hess, hess_ref, rtol=1e-10, atol=1e-12)


def test_loss_gradients_equal_the_naive_per_dimension_autograd_in_float64():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(3), dim=12)
    params = _random_net()
    x = _points(256, 12)
    grads = []
    for naive in (False, True):
        loss, _ = jko_loss(params, x, 0.05, 1.0, 1e-6, _ou_quadratic(task), naive=naive)
        grads.append(torch.autograd.grad(loss, list(params.values())))
    for key, fast, slow in zip(params, *grads):
        rel = float((fast - slow).norm() / slow.norm().clamp_min(1e-300))
        assert rel < 1e-6, f"parameter {key}: relative gradient error {rel:.2e}"


def test_potential_is_convex_and_hessian_is_psd_after_training_steps():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(4), dim=3)
    params = _random_net(dim=3, width=16, rank=2, dtype=torch.float32)
    optimizer = torch.optim.Adam(list(params.values()), lr=0.05)
    for i in range(20):  # large lr: the clamp, not luck, must keep Z, c >= 0
        optimizer.zero_grad()
        loss, _ = jko_loss(params, _points(128, 3, seed=i, dtype=torch.float32), 0.05, 1.0, 1e-6,
                           _ou_quadratic(task))
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            params["Z"].clamp_(min=0.0)
            params["c"].clamp_(min=0.0)
    params = {k: v.detach().double() for k, v in params.items()}
    x = _points(500, 3, seed=99, scale=3.0)
    _, hess = icnn_grad_hess(params, x, 1e-6)
    assert float(torch.linalg.eigvalsh(hess).min()) >= -1e-10
    # convexity of ψ itself (independent of the Hessian formula): midpoint inequality
    y = _points(500, 3, seed=98, scale=3.0)
    mid = icnn_potential(params, 0.5 * (x + y), 1e-6)
    ends = 0.5 * (icnn_potential(params, x, 1e-6) + icnn_potential(params, y, 1e-6))
    assert bool((mid <= ends + 1e-10).all())


def test_logdet_guard_handles_a_non_pd_matrix():
    hess = torch.stack([torch.eye(3), torch.diag(torch.tensor([1.0, 1.0, -1e-9]))]).double()
    logdet, n_fixed = logdet_pd(hess)
    assert n_fixed == 1
    assert torch.isfinite(logdet).all() and abs(float(logdet[0])) < 1e-12


@pytest.mark.parametrize("device", DEVICES)
def test_inverse_of_the_gradient_map_round_trips(device):
    params = _random_net(dim=4, width=32, rank=3, device=device)
    x = _points(300, 4, scale=2.0).to(device)
    with torch.no_grad():
        y, _ = icnn_grad_hess(params, x, 1e-6, hessian=False)
    x_back, unconverged, logdet = invert_map(params, y, 1e-6)
    assert unconverged == 0
    torch.testing.assert_close(x_back, x, rtol=1e-7, atol=1e-7)
    _, hess = icnn_grad_hess(params, x, 1e-6)
    torch.testing.assert_close(logdet, torch.logdet(hess), rtol=1e-9, atol=1e-9)
    # the float32 first phase ends at the same point (float64 Newton finishes it)
    single = {k: v.detach().float() for k, v in params.items()}
    x_mixed, unconverged, logdet_mixed = invert_map(params, y, 1e-6, params32=single)
    assert unconverged == 0
    torch.testing.assert_close(x_mixed, x, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(logdet_mixed, logdet, rtol=1e-9, atol=1e-9)


def test_pushed_log_density_equals_inverse_map_log_density():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(5), dim=3)
    maps = [{k: v.detach() for k, v in _random_net(dim=3, width=16, rank=2, seed=s).items()}
            for s in (10, 11)]
    x0 = torch.as_tensor(task.sample_initial(200, np.random.default_rng(0)))
    l0 = torch.as_tensor(task.log_density_initial(x0.numpy()))
    y, logp = push(maps, x0, 1e-6, l0)
    x_back, logdet, bad, _ = pull_back(maps, y, 1e-6)
    assert bad == 0
    torch.testing.assert_close(x_back, x0, rtol=1e-7, atol=1e-7)
    logp_inv = torch.as_tensor(task.log_density_initial(x_back.numpy())) - logdet
    torch.testing.assert_close(logp_inv, logp, rtol=1e-7, atol=1e-7)


def _run(dim, times, seed=0, device="cpu", **params):
    task = OrnsteinUhlenbeck(np.random.SeedSequence(seed), dim=dim)
    defaults = dict(iters=100, batch_size=256, pool_size=0, pretrain_iters=300, width=16,
                    n_samples=2000)
    solver = IcnnJko(**{**defaults, **params})
    solver.setup(task, times, np.random.SeedSequence(seed + 100), RunContext(device=device))
    return task, solver, solver.run()


def test_tiny_ou_run_beats_a_loose_bound_and_both_density_paths_agree():
    task, _, results = _run(2, [0.1, 0.2])
    ref = task.reference(0.2)
    result = results[0.2]
    value = SYMKL(result, ref, rng=np.random.default_rng(0)).value
    # the identity map (staying at ρ0) is the trivial competitor
    x0 = task.sample_initial(8192, np.random.default_rng(1))
    xq = ref.sample(8192, np.random.default_rng(2))
    stay = symkl_from_logs(task.log_density_initial(x0), ref.log_density(x0),
                           ref.log_density(xq), task.log_density_initial(xq)).value
    assert np.isfinite(value) and value < 0.04 and value < stay / 4, (value, stay)
    x, logp = result.draw(300, np.random.default_rng(3))
    np.testing.assert_allclose(result.log_density(x), logp, rtol=1e-6, atol=1e-6)
    assert result.samples.shape == (2000, 2) and result.samples.dtype == np.float64
    assert set(results) == {0.1, 0.2} and len(result.info["step_times"]) == 4


def test_fresh_sample_mode_runs_and_agrees_with_pool_mode():
    task, _, fresh = _run(1, [0.1], fresh_samples=True)
    _, _, pooled = _run(1, [0.1])
    ref = task.reference(0.1)
    a = SYMKL(fresh[0.1], ref, rng=np.random.default_rng(0)).value
    b = SYMKL(pooled[0.1], ref, rng=np.random.default_rng(0)).value
    assert a < 0.02 and b < 0.02, (a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_device_and_float64_path(device):
    _, solver, results = _run(1, [0.05], device=device, dtype="float64", iters=20,
                              pretrain_iters=50)
    assert solver.maps[0]["Q1"].device.type == device
    assert solver.maps[0]["Q1"].dtype == torch.float64
    x, logp = results[0.05].draw(100, np.random.default_rng(0))
    assert isinstance(x, np.ndarray) and x.dtype == np.float64 and np.isfinite(logp).all()


@pytest.mark.parametrize("bad", [{"h": 0.0}, {"width": 0}, {"dtype": "float16"},
                                 {"fresh_samples": "yes"}, {"pool_size": 10},
                                 {"iters": 2.5}, {"lr": -1.0}, {"lr_final": 2.0}])
def test_bad_parameters_raise_value_error(bad):
    with pytest.raises(ValueError):
        IcnnJko(**bad)


def test_time_not_on_the_step_grid_is_rejected():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=1)
    with pytest.raises(ValueError):
        IcnnJko(pretrain_iters=1).setup(task, [0.07], np.random.SeedSequence(0), RunContext())


def test_independence_mh_targets_the_reweighted_law():
    rng = np.random.default_rng(0)
    chains, warmup, thin, keep = 200, 50, 2, 4000
    x = rng.standard_normal(mh_iterations(keep, chains, warmup, thin) * chains)
    # proposals N(0, 1), target N(1, 1): log target/proposal = x − ½
    rows, rate = independence_mh(x - 0.5, chains, warmup, thin, keep, rng)
    kept = x[rows]
    assert rows.shape == (keep,) and 0.3 < rate < 0.9
    assert abs(kept.mean() - 1.0) < 0.08 and abs(kept.std() - 1.0) < 0.08


def test_filtering_run_assimilates_observations_and_its_density_is_normalised():
    task = Filtering1D(np.random.SeedSequence(0))
    solver = IcnnJko(h=0.1, width=16, iters=60, batch_size=256, pool_size=2048,
                     pretrain_iters=300, n_samples=2000, mh_warmup=100)
    solver.setup(task, [1.0], np.random.SeedSequence(2), RunContext())
    result = solver.run()[1.0]
    ref = task.reference(1.0)
    value = SYMKL_GRID(result, ref, rng=np.random.default_rng(0)).value
    # ρ0 itself (what ignoring both the dynamics and the observations gives)
    def draw(n, rng):
        x = task.sample_initial(n, rng)
        return x, task.log_density_initial(x)

    stay = SYMKL_GRID(SolverResult(log_density=task.log_density_initial, draw=draw), ref,
                      rng=np.random.default_rng(0)).value
    assert value < 0.1 and value < stay / 4, (value, stay)
    mass = np.trapezoid(np.exp(result.log_density(ref.grid[:, None])), ref.grid)
    assert abs(mass - 1.0) < 1e-3
    assert 0.0 < result.info["mh_acceptance"][5] < 1.0
    x, logp = result.draw(200, np.random.default_rng(1))
    np.testing.assert_allclose(result.log_density(x), logp, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_a_second_run_of_one_solver_repeats_the_first():
    """run() depends only on what setup() left: no MH proposals survive from an earlier run."""
    import copy

    task = Filtering1D(np.random.SeedSequence(0))
    solver = IcnnJko(h=0.1, width=8, iters=20, batch_size=128, pool_size=512,
                     pretrain_iters=50, n_samples=500, mh_warmup=50)
    solver.setup(task, [1.0], np.random.SeedSequence(3), RunContext())
    start = copy.deepcopy((solver.rng.bit_generator.state, solver.params0))
    first = solver.run()[1.0].samples
    solver.rng.bit_generator.state = copy.deepcopy(start[0])
    solver.params0 = copy.deepcopy(start[1])
    second = solver.run()[1.0].samples
    np.testing.assert_array_equal(first, second)


class _DataGaussian(Task):
    """Φ(x) = ½ mean_i ‖x − d_i‖² over data d_i, estimated on minibatches (counts them)."""

    name = "_data_gaussian_test"
    version = "0"

    def __init__(self, seed, dim=2):
        super().__init__(seed)
        self.dim, self.batches = dim, 0
        self.data = 1.0 + np.random.default_rng(seed).standard_normal((500, dim))

    def potential(self, x):
        return 0.5 * ((x[:, None, :] - self.data) ** 2).sum(2).mean(1)

    def grad_potential(self, x):
        return x - self.data.mean(0)

    def potential_torch(self, x, batch=None):
        rows = self.data if batch is None else self.data[batch]
        centre = torch.as_tensor(rows.mean(0), dtype=x.dtype, device=x.device)
        return 0.5 * ((x - centre) ** 2).sum(1)

    def data_batch(self, size, rng):
        self.batches += 1
        return rng.choice(self.data.shape[0], size=size, replace=False)

    def sample_initial(self, n, rng):
        return rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        return gaussian_log_density(x, np.zeros(self.dim), np.eye(self.dim))

    def reference(self, t):
        # Φ is, up to a constant, ½‖x − m‖² with m the data mean: an OU flow with A = I
        m, f = self.data.mean(0), np.exp(-t)
        mean, cov = m * (1 - f), np.eye(self.dim)
        return Reference(t=t, sample=gaussian_sampler(mean, cov),
                         log_density=lambda x: gaussian_log_density(x, mean, cov))


def test_data_minibatch_potential_is_used_and_the_flow_is_right():
    task = _DataGaussian(np.random.SeedSequence(0))
    solver = IcnnJko(iters=60, batch_size=256, pool_size=2048, pretrain_iters=300, width=16,
                     n_samples=1000, data_batch_size=50)
    solver.setup(task, [0.1], np.random.SeedSequence(1), RunContext())
    result = solver.run()[0.1]
    assert task.batches >= 2 * 60  # one minibatch per training iteration
    value = SYMKL(result, task.reference(0.1), rng=np.random.default_rng(0)).value
    assert value < 0.05, value


# --- free-energy terms (tasks/free_energy.py): time-dependent V, interaction, porous medium ---
def test_interaction_and_porous_terms_of_the_loss_equal_their_definitions_in_float64():
    # the loss written out from its definition with autograd Hessians and torch.logdet:
    # h (E V(T x) + ½ E W(T x_i − T x_{i−1}) + β⁻¹/(m−1) E (ρ(x)/det ∇²ψ(x))^(m−1)) plus the
    # transport, and its parameter gradients equal to the closed-form path's
    task = Aggregation(np.random.SeedSequence(0), dim=3)
    params = _random_net(dim=3, width=16)
    x = _points(64, 3)
    logp = -1.0 - 0.5 * (x * x).sum(1)
    h, beta, m = 0.05, 2.0, 2.5
    terms = dict(interaction=task.interaction_torch, exponent=m, logp=logp)
    loss, _ = jko_loss(params, x, h, beta, 1e-6, task.potential_torch, **terms)
    grads = torch.autograd.grad(loss, list(params.values()))
    grad, hess = naive_grad_hess(params, x, 1e-6)
    previous = grad[torch.arange(-1, 63)]
    energy = (task.potential_torch(grad).mean()
              + 0.5 * task.interaction_torch(grad - previous).mean()
              + torch.exp((m - 1.0) * (logp - torch.logdet(hess))).mean() / ((m - 1.0) * beta))
    expected = 0.5 * ((grad - x) ** 2).sum(1).mean() + h * energy
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for a, b in zip(grads, torch.autograd.grad(expected, list(params.values()))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def _free_energy_run(task, times, **params):
    defaults = dict(iters=100, batch_size=256, pretrain_iters=300, width=16, n_samples=4000)
    solver = IcnnJko(**{**defaults, **params})
    solver.setup(task, times, np.random.SeedSequence(7), RunContext())
    return solver.run()


@pytest.mark.usefixtures("one_thread")
def test_porous_medium_run_spreads_at_the_barenblatt_rate():
    # ∂ρ/∂t = Δρ² in 2-D from the Barenblatt profile at τ = 1e-3: by t = 0.02 E|x − c|² grows
    # 4.6× (0.034 -> 0.154); with V = 0 and no internal energy nothing would move. The JKO
    # scheme lags the fast start (module docstring: 0.89× / 0.93× / 0.98× the exact at
    # h = 0.005 / 0.0025 / 0.001); here 8 steps of h = 0.0025
    task = PorousMedium(np.random.SeedSequence(0), dim=2, m=2.0)
    x = _free_energy_run(task, [0.02], h=0.0025)[0.02].samples
    exact = np.trace(task.reference(0.02).moments[1])
    spread = ((x - task.centre) ** 2).sum(1)
    assert abs(spread.mean() / exact - 1.0) < 0.15, (spread.mean(), exact)
    assert np.linalg.norm(x.mean(0) - task.centre) < 0.05
    # the law stays inside the exact support up to a thin front (a smooth map cannot make
    # the sharp edge; measured: 3 % beyond R, 0.4 % beyond 1.2 R; a Gaussian of the same
    # spread puts 1.3 % beyond 1.2 R)
    assert np.mean(np.sqrt(spread) > 1.2 * task.support_radius(0.02)) < 0.01


def _moment_errors(x, reference):
    mean, cov = reference.moments
    return (np.linalg.norm(x.mean(0) - mean) / np.sqrt(np.trace(cov)),
            np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov))


@pytest.mark.usefixtures("one_thread")
def test_aggregation_run_matches_the_exact_moments_and_needs_the_interaction():
    # quadratic V and attractive W: the covariance relaxes to K⁻¹ = (A + B)⁻¹, about half of
    # the A⁻¹ that a solver ignoring W would reach (tasks/aggregation.py)
    task = Aggregation(np.random.SeedSequence(0), dim=2)
    x = _free_energy_run(task, [0.5], h=0.05)[0.5].samples
    mean_err, cov_err = _moment_errors(x, task.reference(0.5))
    assert mean_err < 0.1 and cov_err < 0.15, (mean_err, cov_err)
    without_w = np.linalg.inv(task.A)
    cov_exact = task.reference(0.5).moments[1]
    assert np.linalg.norm(cov_exact - without_w) > 3 * cov_err * np.linalg.norm(cov_exact)


@pytest.mark.usefixtures("one_thread")
def test_moving_trap_run_follows_the_moving_centre():
    # V(x, t) at each step's end: the mean follows the centre b(t) round its circle (by t = 1
    # half a turn); the potential frozen at t = 0 would keep it at b(0), where ρ0 is centred
    task = MovingTrap(np.random.SeedSequence(0), dim=2)
    x = _free_energy_run(task, [1.0], h=0.1)[1.0].samples
    ref = task.reference(1.0)
    mean_err, cov_err = _moment_errors(x, ref)
    assert mean_err < 0.15 and cov_err < 0.2, (mean_err, cov_err)
    mean, cov = ref.moments
    assert np.linalg.norm(mean - task.centre(0.0)) / np.sqrt(np.trace(cov)) > 5 * 0.15


def test_declares_the_free_energy_terms_and_a_solver_without_them_is_skipped_with_the_reason():
    tasks = [PorousMedium(np.random.SeedSequence(0), dim=2), Aggregation(np.random.SeedSequence(0)),
             MovingTrap(np.random.SeedSequence(0))]
    for task in tasks:
        assert unsupported_terms(task, IcnnJko) == () and skip_reason(task, IcnnJko) == ""
    # the same solver declaring only what it handled before (V + entropy) is skipped
    plain = type("PlainIcnnJko", (IcnnJko,), {"supports": DEFAULT_TERMS})
    reasons = [skip_reason(task, plain) for task in tasks]
    assert "porous_medium" in reasons[0] and "interaction" in reasons[1] \
        and "time_dependent" in reasons[2], reasons


@pytest.mark.parametrize("dim,width", [(12, 64), (2, 16), (5, 32), (20, 16)])
def test_fused_training_path_equals_the_round3_path_in_float64(dim, width):
    """The fused ∇ψ/log det Function (round 4) against the packed path it replaced (round 3)."""
    import sys
    from pathlib import Path
    bench = str(Path(__file__).parent / "benchmarks")
    if bench not in sys.path:
        sys.path.insert(0, bench)
    import icnn_baseline as old
    task = OrnsteinUhlenbeck(np.random.SeedSequence(3), dim=dim)
    params = _random_net(dim=dim, width=width)
    x = _points(300, dim, scale=1.5)
    potential = lambda y: task.potential_torch(y) + 0.1 * y[:, 0] ** 3  # noqa: E731
    new, _ = jko_loss(params, x, 0.05, 0.7, 1e-6, potential)
    ref = old.round3_jko_loss(params, x, 0.05, 0.7, 1e-6, potential)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-14)
    for key, fast, slow in zip(params, torch.autograd.grad(new, list(params.values())),
                               torch.autograd.grad(ref, list(params.values()))):
        rel = float((fast - slow).norm() / slow.norm().clamp_min(1e-300))
        assert rel < 1e-12, f"parameter {key}: relative gradient error {rel:.2e}"
    # porous-medium form (the log det enters through exp) and the interaction term
    logp = -0.5 * (x * x).sum(1)
    pair = lambda d: (d * d).sum(1)  # noqa: E731
    new, _ = jko_loss(params, x, 0.05, 0.7, 1e-6, potential, interaction=pair,
                      exponent=2.0, logp=logp)
    grads = torch.autograd.grad(new, list(params.values()))
    from numerics.icnn import icnn_grad_hess
    grad, hess = icnn_grad_hess(params, x, 1e-6)
    logdet = torch.logdet(hess)
    ref = 0.5 * ((grad - x) ** 2).sum(1).mean() + 0.05 * (
        potential(grad).mean() + torch.exp(logp - logdet).mean() / 0.7
        + 0.5 * pair(grad - torch.roll(grad, 1, dims=0)).mean())
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=1e-14)
    for key, fast, slow in zip(params, grads, torch.autograd.grad(ref, list(params.values()))):
        rel = float((fast - slow).norm() / slow.norm().clamp_min(1e-300))
        assert rel < 1e-10, f"parameter {key}: relative gradient error {rel:.2e}"


def test_fused_path_reports_jittered_factors_and_float32_agrees():
    from numerics.icnn import icnn_grad_logdet
    params = _random_net(dim=4, width=8, rank=2)
    x = _points(64, 4)
    with torch.no_grad():
        params["c"].zero_()   # ∇²ψ = εI: with ε = 0 singular, every factor needs jitter
    _, logdet, n_fixed = icnn_grad_logdet(params, x, 0.0)
    assert n_fixed == 64 and torch.isfinite(logdet).all()
    params = _random_net(dim=12, width=64)
    x = _points(256, 12)
    p32 = {k: v.detach().float().requires_grad_(True) for k, v in params.items()}
    g64, l64, _ = icnn_grad_logdet(params, x, 1e-6)
    g32, l32, _ = icnn_grad_logdet(p32, x.float(), 1e-6)
    torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(l32.double(), l64, rtol=1e-4, atol=1e-4)
