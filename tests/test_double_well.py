"""The rotated double-well task: its 1-D solves, its product law, and checks that share no code.

The independent checks are a 2-D finite-volume solution of the full rotated
(non-separable) problem on a Cartesian grid, written here with scipy, and
Euler–Maruyama particles at D = 8, also written here.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from scipy import sparse, stats
from scipy.integrate import quad
from scipy.sparse.linalg import splu
from threadpoolctl import threadpool_limits

from numerics.chang_cooper import solve_on_grid
from numerics.product_law import grid_symkl, product_grid_law, solve_wells, step_schedule
from execution import store
from tasks.double_well import (DT, DX, HALF_WIDTH, WELL_A, WELL_C, WELL_START, DoubleWell,
                               interpolant_on, right_mass, stationary_right_mass, well_grid,
                               well_potential, well_solutions)

ALL_WELLS = np.arange(WELL_A.size)


@pytest.fixture(autouse=True)
def one_blas_thread():
    """One BLAS thread, as the runner pins each run: on a busy 2-core machine two threads
    made the (40000, 8) @ (8, 8) products of the particle check 30x slower."""
    with threadpool_limits(1):
        yield


def make(dim=2, beta=1.0, entropy=3, rotation="random"):
    return DoubleWell(np.random.SeedSequence(entropy), dim=dim, beta=beta, rotation=rotation)


# --- the task's construction -------------------------------------------------------
def test_rotation_is_a_seeded_rotation_and_parameters_are_checked():
    a, b, c = make(8), make(8), make(8, entropy=4)
    assert np.array_equal(a.Q, b.Q) and not np.allclose(a.Q, c.Q)
    assert np.allclose(a.Q @ a.Q.T, np.eye(8), atol=1e-12) and np.linalg.det(a.Q) > 0
    assert np.array_equal(make(8, rotation="identity").Q, np.eye(8))
    assert np.array_equal(make(1).Q, np.eye(1))
    for bad in ({"dim": 0}, {"dim": 2.5}, {"dim": 65}, {"beta": 0.1}, {"beta": float("nan")},
                {"rotation": "haar"}, {"sigma": 1.0}):
        with pytest.raises(ValueError):
            DoubleWell.validate_params(bad)
    # no Gaussian opt-in: the Gaussian-only solver and the moment metrics cannot apply
    assert not hasattr(a, "quadratic_potential") and not hasattr(a, "initial_gaussian")
    assert a.reference(0.5).moments is None


def test_potential_numpy_torch_and_gradients_agree():
    for task in (make(8), make(1, beta=2.0)):
        x = np.random.default_rng(0).normal(size=(50, task.dim)) * 1.5
        u = x @ task.Q.T
        expected = sum(well_potential(u[:, i], WELL_A[i % 4], WELL_C[i % 4])
                       for i in range(task.dim))
        assert np.allclose(task.potential(x), expected, rtol=1e-12)
        h = 1e-6
        fd = np.stack([(task.potential(x + h * e) - task.potential(x - h * e)) / (2 * h)
                       for e in np.eye(task.dim)], axis=1)
        assert np.allclose(task.grad_potential(x), fd, atol=1e-5)
        xt = torch.tensor(x, requires_grad=True)
        assert np.allclose(task.potential_torch(xt).detach().numpy(), task.potential(x))
        (g,) = torch.autograd.grad(task.potential_torch(xt).sum(), xt)
        assert np.allclose(g.numpy(), task.grad_potential(x))
        assert np.allclose(task.grad_potential_torch(torch.tensor(x)).numpy(), g.numpy())


def test_initial_law_is_the_stated_gaussian():
    task = make(8)
    x = task.sample_initial(4000, np.random.default_rng(1))
    assert np.allclose(task.mean0 @ task.Q.T, WELL_START[np.arange(8) % 4])
    assert np.allclose(task.log_density_initial(x), stats.multivariate_normal(
        task.mean0, 0.09 * np.eye(8)).logpdf(x))
    assert np.abs(x.mean(axis=0) - task.mean0).max() < 0.03


# --- the 1-D solves ------------------------------------------------------------------
def test_stacked_wells_equal_separate_chang_cooper_runs():
    grid, out = well_solutions(ALL_WELLS, 1.0, (0.5,), HALF_WIDTH, DX, DT)
    for k in ALL_WELLS:
        _, single = solve_on_grid(
            lambda x, k=k: well_potential(np.asarray(x)[:, 0], WELL_A[k], WELL_C[k]), 1.0,
            lambda x, k=k: -0.5 * ((np.asarray(x)[:, 0] - WELL_START[k]) / 0.3) ** 2,
            HALF_WIDTH, grid.size, DT, [0.5])
        assert np.allclose(out[0.5][k], single[0.5], rtol=1e-9, atol=1e-14)


def test_step_schedule_hits_every_time():
    assert step_schedule([0.5, 1.0], 1e-3) == [(0.5 / 500, 500), (0.5 / 500, 500)]
    for (h, n), span in zip(step_schedule([0.3337, 1.0], 1e-3), [0.3337, 1.0 - 0.3337]):
        assert h <= 1e-3 and h * n == pytest.approx(span, abs=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_wells_conserve_mass_stay_positive_and_tend_to_the_gibbs_law(beta):
    grid, out = well_solutions(ALL_WELLS, beta, (0.5, 1.0), HALF_WIDTH, DX, DT)
    dx = grid[1] - grid[0]
    for t, rho in out.items():
        assert np.abs(rho.sum(axis=1) * dx - 1.0).max() < 1e-12
        assert rho.min() >= 0.0
    # the long-time limit (implicit Euler's fixed point does not depend on the step)
    phi = well_potential(grid[None, :], WELL_A[:, None], WELL_C[:, None])
    rho0 = np.exp(-0.5 * ((grid[None, :] - WELL_START[:, None]) / 0.3) ** 2)
    late = solve_wells(phi, rho0 / (rho0.sum(axis=1, keepdims=True) * dx), dx, beta, 0.05,
                       (200.0,))[200.0]
    for k in ALL_WELLS:
        shift = phi[k].min()
        z, _ = quad(lambda u: np.exp(-beta * (well_potential(u, WELL_A[k], WELL_C[k]) - shift)),
                    -6.0, 6.0, points=[-1.0, 0.0, 1.0], epsabs=0, epsrel=1e-13)
        gibbs = np.exp(-beta * (phi[k] - shift)) / z
        bulk = gibbs > 1e-6 * gibbs.max()
        assert np.abs(late[k][bulk] / gibbs[bulk] - 1.0).max() < 1e-6
        # ... and the default times are far from it, and from the start (metastable)
        masses = right_mass(grid, np.stack([rho0[k], out[0.5][k], out[1.0][k], gibbs]))
        assert np.all(np.abs(np.diff(masses)) > 0.04), masses
    assert np.allclose(right_mass(grid, late), stationary_right_mass(beta, ALL_WELLS),
                       atol=1e-6)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_refinement_error_bounds_the_actual_error(beta):
    task = make(4, beta=beta)
    grid = well_grid(HALF_WIDTH, DX)
    fine_grid, fine = well_solutions(task.wells, beta, task.default_times, HALF_WIDTH, DX / 2,
                                     DT / 8)
    _, coarse = well_solutions(task.wells, beta, task.default_times, HALF_WIDTH, 4 * DX,
                               4 * DT)
    for t in task.default_times:
        base, bound = task.well_densities(t)[1], task.well_errors(t)
        for k in task.wells:
            p = interpolant_on(grid, grid, base[k])
            actual = grid_symkl(grid, p, interpolant_on(grid, fine_grid, fine[t][k]))
            assert actual <= bound[k] <= 1.2e-6   # the module docstring's numbers
            # a 4x coarser run is visibly worse: the comparison can see the scheme's error
            coarse_grid = well_grid(HALF_WIDTH, 4 * DX)
            assert grid_symkl(grid, p, interpolant_on(grid, coarse_grid, coarse[t][k])) \
                > 3 * bound[k]
        assert task.reference(t).error_estimate == pytest.approx(bound.sum())


# --- the product law: samples, density, normalisation ---------------------------------
def test_log_density_integrates_to_one_and_matches_samples_in_2d():
    task = make(2, beta=2.0)
    ref = task.reference(1.0)
    xs = np.arange(-4.5, 4.5, 0.01) + 0.005
    pts = np.stack(np.meshgrid(xs, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    density = np.exp(ref.log_density(pts))
    assert density.sum() * 1e-4 == pytest.approx(1.0, abs=1e-4)
    # smooth quadrant probabilities in the rotated frame: quadrature against samples
    f = smooth_quadrants(task.rotated(pts))
    by_quadrature = f.T @ density * 1e-4
    x = ref.sample(100000, np.random.default_rng(5))
    g = smooth_quadrants(task.rotated(x))
    se = g.std(axis=0) / np.sqrt(x.shape[0])
    assert np.all(np.abs(g.mean(axis=0) - by_quadrature) < 4 * se + 1e-4)
    # the same check fails for the law rotated the wrong way (Qᵀ for Q)
    grid, dens = task.well_densities(1.0)
    wrong_log_density, _ = product_grid_law(grid, dens, np.arange(2), task.Q.T)
    wrong = smooth_quadrants(task.rotated(pts)).T @ np.exp(wrong_log_density(pts)) * 1e-4
    assert np.abs(wrong - by_quadrature).max() > 0.01


def test_samples_follow_the_log_density_along_each_rotated_axis_in_8d():
    task = make(8, beta=1.0)
    ref = task.reference(0.5)
    u = task.rotated(ref.sample(20000, np.random.default_rng(6)))
    s = np.linspace(-HALF_WIDTH, HALF_WIDTH, 14001)
    base = np.zeros(8)
    other = task.reference(1.0)
    for i in range(8):
        # the log-density along one rotated axis is that coordinate's marginal (+ a constant)
        line = base + s[:, None] * np.eye(8)[i]
        cdf = marginal_cdf(s, ref.log_density(line @ task.Q))
        assert stats.kstest(u[:, i], lambda v: np.interp(v, s, cdf)).pvalue > 1e-3
        # the test sees a wrong time: the t = 1 marginal rejects the t = 0.5 samples
        cdf_other = marginal_cdf(s, other.log_density(line @ task.Q))
        if i < 4:
            assert stats.kstest(u[:, i], lambda v: np.interp(v, s, cdf_other)).pvalue < 1e-6


def marginal_cdf(s, log_density):
    p = np.exp(log_density - log_density.max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(s))])
    return cdf / cdf[-1]


def smooth_quadrants(u, eps=0.05):
    """Smooth indicators (n, 4) of the four quadrants of the first two rotated coordinates."""
    s1, s2 = 1.0 / (1.0 + np.exp(-u[:, 0] / eps)), 1.0 / (1.0 + np.exp(-u[:, 1] / eps))
    return np.stack([s1 * s2, s1 * (1 - s2), (1 - s1) * s2, (1 - s1) * (1 - s2)], axis=1)


# --- checks that share no code with the reference ---------------------------------------
def sqra_generator(phi, h, beta):
    """Forward generator of the square-root approximation on an n×n Cartesian grid.

    A finite-volume Markov jump discretisation (Lie, Fackeldey & Weber 2013): the
    rate between neighbouring cells i → j is exp(−β(Φ_j − Φ_i)/2) / (βh²). It is
    exactly reversible for exp(−βΦ) and keeps positivity, like Chang–Cooper, but
    shares no formula or code with it, and the grid is not aligned with the wells.
    """
    n = phi.shape[0]
    idx = np.arange(n * n).reshape(n, n)
    flat = phi.ravel()
    rows, cols, vals = [], [], []
    for a, b in ((idx[:-1, :], idx[1:, :]), (idx[:, :-1], idx[:, 1:])):
        a, b = a.ravel(), b.ravel()
        q_ab = np.exp(-0.5 * beta * (flat[b] - flat[a])) / (beta * h * h)
        q_ba = np.exp(-0.5 * beta * (flat[a] - flat[b])) / (beta * h * h)
        rows += [b, a, a, b]
        cols += [a, a, b, b]
        vals += [q_ab, -q_ab, q_ba, -q_ba]
    return sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(n * n, n * n))


def solve_2d(task, times, half_width=3.3, n=133, dt=2e-3):
    """Cell densities of the full 2-D problem: SQRA in space, Crank–Nicolson in time.

    Four implicit Euler quarter steps first (Rannacher's start) damp the stiff
    modes of the initial Gaussian that Crank–Nicolson would not.
    """
    xs = np.linspace(-half_width, half_width, n)
    h = xs[1] - xs[0]
    pts = np.stack(np.meshgrid(xs, xs, indexing="ij"), axis=-1).reshape(-1, 2)
    gen = sqra_generator(task.potential(pts).reshape(n, n), h, task.beta)
    eye = sparse.identity(n * n, format="csc")
    rho = np.exp(task.log_density_initial(pts))
    rho /= rho.sum() * h * h
    start = splu(eye - 0.25 * dt * gen)
    for _ in range(4):
        rho = start.solve(rho)
    implicit, explicit = splu(eye - 0.5 * dt * gen), eye + 0.5 * dt * gen
    out, step = {}, 1
    for t in sorted(times):
        for _ in range(int(round(t / dt)) - step):
            rho = implicit.solve(explicit @ rho)
        step = int(round(t / dt))
        out[t] = rho.copy()
    return pts, h, out


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_reference_matches_a_2d_finite_volume_solution_of_the_rotated_problem(beta):
    """Measured at h = 0.05, dt = 2e-3: quadrant differences ≤ 3.2e-4, L1 ≤ 7.4e-4."""
    task = make(2, beta=beta)
    pts, h, out = solve_2d(task, task.default_times)
    f = smooth_quadrants(task.rotated(pts))
    for t, rho in out.items():
        assert rho.sum() * h * h == pytest.approx(1.0, abs=1e-10)
        ref = np.exp(task.reference(t).log_density(pts))
        assert np.abs(f.T @ (rho - ref) * h * h).max() < 1e-3
        assert np.abs(rho - ref).sum() * h * h < 2e-3
        # and the comparison is sharp: the reference at the other time is far off
        other = np.exp(task.reference(1.5 - t).log_density(pts))
        assert np.abs(rho - other).sum() * h * h > 0.02


def test_reference_well_masses_match_euler_maruyama_particles_in_8d():
    """2·10⁴ particles, dt = 1e-3 to t = 0.5: binomial error ≤ 0.0035, time-step bias ~1e-3."""
    task = make(8, beta=1.0)
    rng = np.random.default_rng(11)
    n, dt = 20000, 1e-3
    x = task.sample_initial(n, rng)
    for _ in range(500):
        noise = rng.standard_normal(x.shape)
        x += -task.grad_potential(x) * dt + np.sqrt(2 * dt / task.beta) * noise
    right = task.rotated(x) > 0
    expected = task.right_well_mass(0.5)[task.kinds]
    se = np.sqrt(expected * (1 - expected) / n)
    assert np.all(np.abs(right.mean(axis=0) - expected) < 4 * se + 3e-3)
    # independence of the rotated coordinates (the product structure)
    both = (right[:, 0] & right[:, 1]).mean()
    assert both == pytest.approx(expected[0] * expected[1], abs=4 * 0.0035 + 3e-3)
    # the check resolves the flow: the masses at t = 1 are outside its tolerance
    later = task.right_well_mass(1.0)[task.kinds]
    assert np.all(np.abs(right.mean(axis=0) - later) > 4 * se + 3e-3)


# --- cost and the project's contracts -----------------------------------------------------
def test_reference_at_d64_is_cheap_and_cached():
    start = time.perf_counter()
    task = make(64, beta=2.0)
    refs = [task.reference(t) for t in task.default_times]
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed          # ~0.15 s on an idle core
    assert task.reference(1.0) is refs[1]
    assert all(0 < r.error_estimate < 5e-5 for r in refs)
    assert "error_estimate" in refs[0].provenance and f"{refs[0].error_estimate:.1e}" \
        in refs[0].provenance
    x = refs[1].sample(8192, np.random.default_rng(0))
    assert x.shape == (8192, 64) and np.isfinite(refs[1].log_density(x)).all()


def test_cli_runs_the_oracle_and_em_and_skips_gaussian_solvers(gfbench, tmp_path):
    code, stdout, _ = gfbench("list")
    assert code == 0 and "double_well" in stdout
    out = tmp_path / "out"
    code, _, stderr = gfbench(
        "run", "--task", "double_well", "-P", "double_well.dim=2", "-P", "double_well.beta=2.0",
        "--solver", "exact", "--solver", "em", "--solver", "gaussian_jko", "--solver", "svgd",
        "-P", "em.n_particles=300", "-P", "exact.n_samples=512", "--times", "0.1",
        "--seeds", "1", "--metrics", "energy,symkl", "--quiet", "--no-report", "--out", out)
    assert code == 0, stderr
    rows = store.load(out).set_index("solver")
    assert rows.loc["exact", "status"] == "ok" and rows.loc["em", "status"] == "ok"
    assert abs(rows.loc["exact", "symkl"]) < 5 * rows.loc["exact", "symkl_se"] + 1e-3
    assert "Chang-Cooper" in rows.loc["exact", "reference_provenance"]
    for name in ("gaussian_jko", "svgd"):
        assert rows.loc[name, "status"] == "skipped" and rows.loc[name, "error"]
