"""The free-energy contract and its three closed-form tasks, checked by independent routes.

- porous_medium: normalisation by quadrature, sampled radii against the
  quadrature CDF of the log-density (KS), and a radial finite-volume solution
  of ∂ρ/∂t = Δρ^m written here from the PDE, not from the profile's formula;
- aggregation, moving_trap: the moment ODEs integrated numerically (solve_ivp,
  rtol 1e-10) with the drift written out here; Euler–Maruyama particles
  (solvers/em.py) against the exact expectation of the same discrete scheme
  (a deterministic recursion), within k standard errors, and that recursion
  against the closed form as dt → 0 (first order);
- em: on the tasks without the new terms, the particles are the same numbers
  as before the free-energy terms were added (values recorded with the
  pre-change module, ``git show HEAD:solvers/em.py``, at commit time of this file).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import solve_ivp
from scipy.special import gammaln

from solvers.base import RunContext
from solvers.em import EulerMaruyama
from tasks.aggregation import Aggregation
from tasks.free_energy import (ALL_TERMS, DEFAULT_TERMS, ENTROPY, INTERACTION, POROUS_MEDIUM,
                               POTENTIAL, TIME_DEPENDENT, FreeEnergy, FreeEnergyTask,
                               free_energy_of, free_energy_terms, mean_field_gradient,
                               skip_reason, unsupported_terms)
from tasks.moving_trap import MovingTrap
from tasks.ou import OrnsteinUhlenbeck
from tasks.porous_medium import PorousMedium

#: a Monte Carlo check fails beyond this many standard errors
K_SE = 4.5


def seed(entropy: int = 0) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy)


def sphere_area(dim: int) -> float:
    """|S^{D−1}| = 2π^{D/2}/Γ(D/2)."""
    return float(2.0 * np.pi ** (dim / 2.0) / np.exp(gammaln(dim / 2.0)))


def run_em(task, times, n, dt, entropy=1):
    solver = EulerMaruyama(n_particles=n, dt=dt)
    skip, reason = solver.skip(task)
    assert not skip, reason
    solver.setup(task, times, np.random.SeedSequence(entropy), RunContext())
    return {t: r.samples for t, r in solver.run().items()}


# --- the contract --------------------------------------------------------------------------
def test_terms_of_plain_and_new_tasks():
    assert free_energy_terms(OrnsteinUhlenbeck(seed(), dim=2)) == DEFAULT_TERMS
    assert free_energy_of(OrnsteinUhlenbeck(seed(), dim=2)).internal == ENTROPY
    assert free_energy_terms(Aggregation(seed(), dim=2)) == {POTENTIAL, INTERACTION, ENTROPY}
    assert free_energy_terms(MovingTrap(seed(), dim=2)) == {POTENTIAL, TIME_DEPENDENT, ENTROPY}
    pme = PorousMedium(seed(), dim=2, m=3.0)
    assert free_energy_terms(pme) == {POROUS_MEDIUM}
    assert free_energy_of(pme).internal == POROUS_MEDIUM and free_energy_of(pme).exponent == 3.0


def test_unsupported_terms_and_skip_reasons():
    class Plain:  # a solver written before the contract: no ``supports``
        name = "plain"

    class Everything:
        name = "everything"
        supports = ALL_TERMS

    ou, agg = OrnsteinUhlenbeck(seed(), dim=2), Aggregation(seed(), dim=2)
    trap, pme = MovingTrap(seed(), dim=2), PorousMedium(seed(), dim=1)
    assert unsupported_terms(ou, Plain) == () and skip_reason(ou, Plain) == ""
    assert unsupported_terms(agg, Plain) == (INTERACTION,)
    assert unsupported_terms(trap, Plain) == (TIME_DEPENDENT,)
    assert unsupported_terms(pme, Plain) == (POROUS_MEDIUM,)
    assert "porous_medium" in skip_reason(pme, Plain) and "plain" in skip_reason(pme, Plain)
    assert all(unsupported_terms(t, Everything) == () for t in (ou, agg, trap, pme))
    # em: interacting particles and time-dependent drift, but no density for ρ^m
    for task in (ou, agg, trap):
        assert EulerMaruyama(n_particles=10).skip(task) == (False, "")
    skip, reason = EulerMaruyama(n_particles=10).skip(pme)
    assert skip and "porous_medium" in reason


@pytest.mark.parametrize("kwargs", [
    {"terms": {"potential", "gravity"}},
    {"terms": {TIME_DEPENDENT, ENTROPY}},
    {"terms": {ENTROPY, POROUS_MEDIUM}, "exponent": 2.0},
    {"terms": {POROUS_MEDIUM}},
    {"terms": {POROUS_MEDIUM}, "exponent": 1.0},
    {"terms": {ENTROPY}, "exponent": 2.0},
    {"terms": {ENTROPY}, "beta": 0.0},
])
def test_invalid_free_energies_are_refused(kwargs):
    with pytest.raises(ValueError):
        FreeEnergy(frozenset(kwargs.pop("terms")), **kwargs)


def test_free_energy_task_is_not_a_registered_task():
    # the registry keeps non-abstract Task subclasses with a ``name``: the base has neither
    assert getattr(FreeEnergyTask, "name", None) is None
    assert FreeEnergyTask.__abstractmethods__


def test_mean_field_gradient_matches_a_double_loop_in_any_block_size():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))

    def grad_w(z):  # a non-quadratic even W: W = log cosh |z|², ∇W = 2 tanh(|z|²) z
        return 2.0 * np.tanh(np.sum(z * z, axis=1, keepdims=True)) * z

    loop = np.array([[0.0, 0.0, 0.0]] * 7)
    for i in range(7):
        for j in range(5):
            loop[i] += grad_w((x[i] - y[j])[None, :])[0] / 5
    for block in (1, 15, 16, 10 ** 6):
        np.testing.assert_allclose(mean_field_gradient(grad_w, x, y, block=block), loop,
                                   rtol=1e-13, atol=1e-15)


def test_aggregation_shortcut_field_equals_the_pairwise_sum():
    task = Aggregation(seed(2), dim=5)
    x = np.random.default_rng(0).standard_normal((300, 5))
    pairwise = FreeEnergyTask.interaction_field(task, x, x)
    np.testing.assert_allclose(task.interaction_field(x, x), pairwise, rtol=1e-10, atol=1e-12)


def autograd_or_zero(value, x):
    """∇ of ``value.sum()`` in ``x``; zero for a constant (a term the task does not have)."""
    import torch

    if not value.requires_grad:
        return torch.zeros_like(x)
    return torch.autograd.grad(value.sum(), x)[0]


@pytest.mark.parametrize("make", [
    lambda: Aggregation(seed(4), dim=3), lambda: MovingTrap(seed(4), dim=3),
    lambda: PorousMedium(seed(4), dim=3)])
def test_numpy_and_torch_evaluators_agree_and_gradients_are_gradients(make):
    import torch

    task = make()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, task.dim))
    for t in (0.0, 0.37):
        xt = torch.tensor(x, requires_grad=True)
        v = task.potential_t_torch(xt, t)
        g = autograd_or_zero(v, xt)
        np.testing.assert_allclose(v.detach().numpy(), task.potential_t(x, t), atol=1e-12)
        np.testing.assert_allclose(task.grad_potential_t(x, t), g.numpy(), atol=1e-12)
        np.testing.assert_allclose(
            task.grad_potential_t_torch(torch.tensor(x), t).numpy(), g.numpy(), atol=1e-12)
    zt = torch.tensor(x, requires_grad=True)
    w = task.interaction_torch(zt)
    gw = autograd_or_zero(w, zt)
    np.testing.assert_allclose(w.detach().numpy(), task.interaction(x), atol=1e-12)
    np.testing.assert_allclose(task.grad_interaction(x), gw.numpy(), atol=1e-12)
    np.testing.assert_allclose(task.grad_interaction(x), -task.grad_interaction(-x), atol=1e-12)


# --- porous medium -----------------------------------------------------------------------
def radial_density(task, t, r):
    """ρ at distance ``r (k,)`` from the centre, along the first axis."""
    x = task.centre + r[:, None] * np.eye(task.dim)[0]
    return np.exp(task.reference(t).log_density(x))


@pytest.mark.parametrize("dim,m", [(1, 2.0), (3, 2.0), (4, 3.0), (8, 3.0), (16, 2.0)])
def test_barenblatt_is_normalised_by_radial_quadrature(dim, m):
    task = PorousMedium(seed(), dim=dim, m=m)
    for t in (0.0,) + task.default_times:
        R = task.support_radius(t)
        r = np.linspace(0.0, R * 1.01, 400_001)
        mass = sphere_area(dim) * np.trapezoid(r ** (dim - 1) * radial_density(task, t, r), r)
        # the front's (R − r)^{1/(m−1)} kink limits the trapezoid rule: ~1e-7 at m = 3
        assert mass == pytest.approx(1.0, abs=1e-6)
        assert radial_density(task, t, np.array([R * 1.0001]))[0] == 0.0


def test_barenblatt_is_normalised_on_a_2d_cartesian_grid():
    task = PorousMedium(seed(), dim=2, m=2.0)
    t = 0.02
    R = task.support_radius(t)
    u = np.linspace(-1.05 * R, 1.05 * R, 1201)
    xx, yy = np.meshgrid(u + task.centre[0], u + task.centre[1], indexing="ij")
    p = np.exp(task.reference(t).log_density(np.stack([xx.ravel(), yy.ravel()], axis=1)))
    assert p.sum() * (u[1] - u[0]) ** 2 == pytest.approx(1.0, abs=2e-4)


@pytest.mark.parametrize("dim,m", [(1, 2.0), (2, 3.0), (5, 2.0), (8, 3.0)])
def test_sampled_radii_follow_the_log_density(dim, m):
    task = PorousMedium(seed(1), dim=dim, m=m)
    t = 0.02
    ref = task.reference(t)
    x = ref.sample(20000, np.random.default_rng(dim))
    assert np.isfinite(ref.log_density(x)).all()
    radii = np.linalg.norm(x - task.centre, axis=1)
    r = np.linspace(0.0, task.support_radius(t), 20001)
    pdf = r ** (dim - 1) * radial_density(task, t, r)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(r))])
    cdf /= cdf[-1]
    assert stats.kstest(radii, lambda q: np.interp(q, r, cdf)).pvalue > 1e-3
    # directions: the sample mean is the centre, the covariance isotropic (k standard errors)
    mean, cov = ref.moments
    se_mean = np.sqrt(np.diag(cov) / len(x))
    assert np.all(np.abs(x.mean(axis=0) - mean) < K_SE * se_mean)
    var_hat = np.atleast_2d(np.cov(x.T)).diagonal()
    kurt_se = np.sqrt(np.var((x - x.mean(0)) ** 2, axis=0) / len(x))
    assert np.all(np.abs(var_hat - np.diag(cov)) < K_SE * kurt_se)


def radial_pme(rho: np.ndarray, dr: float, dim: int, m: float, t_span: float,
               cfl: float = 0.4) -> np.ndarray:
    """Explicit finite volumes for ∂ρ/∂t = r^{1−D}∂_r(r^{D−1}∂_r ρ^m) on cells of [0, n·dr].

    Cell averages ``rho (n,)``; zero flux at r = 0 and at the outer wall;
    conservative (Σ vol·ρ is constant to rounding). The step obeys the
    diffusion limit with the current largest diffusivity m ρ^{m−1}.
    """
    n = rho.shape[0]
    faces = dr * np.arange(n + 1)
    vol = (faces[1:] ** dim - faces[:-1] ** dim) / dim
    area = faces[1:-1] ** (dim - 1)                    # inner faces
    inv = 1.0 / vol
    limit = np.min(vol[1:] / area) * dr / 2.0          # vol/(2·area/dr) per cell
    elapsed = 0.0
    rho = rho.copy()
    while elapsed < t_span:
        dt = min(cfl * limit / (m * rho.max() ** (m - 1.0)), t_span - elapsed)
        flux = area * np.diff(rho ** m) / dr           # outward flux through each inner face
        change = np.zeros(n)
        change[:-1] += flux
        change[1:] -= flux
        rho = rho + dt * change * inv
        elapsed += dt
    return rho


@pytest.mark.parametrize("dim,m", [(1, 2.0), (3, 3.0)])
def test_barenblatt_evolves_like_a_finite_volume_solution_of_the_pme(dim, m):
    task = PorousMedium(seed(), dim=dim, m=m)
    t_end = task.default_times[-1]
    width = 1.15 * task.support_radius(t_end)
    n = 200
    dr = width / n
    centres = dr * (np.arange(n) + 0.5)
    vol = ((centres + dr / 2) ** dim - (centres - dr / 2) ** dim) / dim * sphere_area(dim)
    # the initial law: cell averages of the task's ρ0 (5-point sub-cell mean)
    sub = (centres[:, None] + dr * (np.arange(5) - 2.0) / 5.0).ravel()
    rho0 = radial_density(task, 0.0, sub).reshape(n, 5).mean(axis=1)
    rho0 /= np.sum(rho0 * vol)
    rho, elapsed = rho0, 0.0
    for t in task.default_times:
        rho = radial_pme(rho, dr, dim, m, t - elapsed)
        elapsed = t
        exact = radial_density(task, t, centres)
        assert np.sum(rho * vol) == pytest.approx(1.0, abs=1e-10)
        # L1 distance of the laws, measured ≤ 7.5e-4 (D = 3, m = 3: the (R − r)^{1/2} front)
        # and ≤ 7e-5 (D = 1, m = 2) at 200 cells; halving dr divides it by 2 … 3
        assert np.sum(np.abs(rho - exact) * vol) < 2e-3
        # E|x − c|² = tr Σ: the spreading law τ^{2α/D}; measured |rel. error| ≤ 9e-5
        second = np.sum(rho * centres ** 2 * vol)
        assert second == pytest.approx(np.trace(task.reference(t).moments[1]), rel=3e-4)


def test_porous_medium_parameters_are_checked():
    for bad in ({"m": 1.0}, {"m": 0.5}, {"dim": 0}, {"dim": 2.5}, {"m": True}):
        with pytest.raises(ValueError):
            PorousMedium.validate_params(bad)


# --- aggregation and moving trap: moments ---------------------------------------------------
def lyapunov_rhs(K: np.ndarray, beta: float):
    d = K.shape[0]

    def rhs(cov_flat):
        cov = cov_flat.reshape(d, d)
        return (-K @ cov - cov @ K + 2.0 / beta * np.eye(d)).ravel()
    return rhs


def test_aggregation_moments_match_a_numerical_ode_solve():
    task = Aggregation(seed(5), dim=4)
    d, times = task.dim, task.default_times
    A, B, c = task.A, task.B, task.c
    lyap = lyapunov_rhs(A + B, task.beta)

    def rhs(t, y):  # mean: dm/dt = −∇V(m) − E[∇W(m − Y)] = −A(m − c) − B(m − m)
        mean = y[:d]
        return np.concatenate([-A @ (mean - c), lyap(y[d:])])

    y0 = np.concatenate([np.zeros(d), np.eye(d).ravel()])
    sol = solve_ivp(rhs, (0.0, times[-1]), y0, t_eval=times, rtol=1e-11, atol=1e-13)
    for k, t in enumerate(times):
        mean, cov = task.marginal(t)
        np.testing.assert_allclose(mean, sol.y[:d, k], atol=1e-8)
        np.testing.assert_allclose(cov, sol.y[d:, k].reshape(d, d), atol=1e-8)


def test_moving_trap_moments_match_a_numerical_ode_solve():
    task = MovingTrap(seed(6), dim=5)
    d, times, A = task.dim, task.default_times, task.A
    lyap = lyapunov_rhs(A, task.beta)

    def centre(t):  # written out: radius 2, half a turn per unit time, first two axes
        return np.array([2.0 * np.cos(np.pi * t), 2.0 * np.sin(np.pi * t), 0.0, 0.0, 0.0])

    def rhs(t, y):
        return np.concatenate([-A @ (y[:d] - centre(t)), lyap(y[d:])])

    y0 = np.concatenate([centre(0.0), 0.25 * np.eye(d).ravel()])
    sol = solve_ivp(rhs, (0.0, times[-1]), y0, t_eval=times, rtol=1e-11, atol=1e-13)
    for k, t in enumerate(times):
        mean, cov = task.marginal(t)
        np.testing.assert_allclose(mean, sol.y[:d, k], atol=1e-8)
        np.testing.assert_allclose(cov, sol.y[d:, k].reshape(d, d), atol=1e-8)
    np.testing.assert_allclose(task.initial_gaussian()[0], centre(0.0), atol=1e-15)


def test_moving_trap_in_one_dimension_moves_along_the_cosine():
    task = MovingTrap(seed(), dim=1)
    lam = task.A[0, 0]
    t = 0.8
    sol = solve_ivp(lambda s, y: -lam * (y - 2.0 * np.cos(np.pi * s)), (0.0, t), [2.0],
                    rtol=1e-12, atol=1e-13)
    assert task.marginal(t)[0][0] == pytest.approx(sol.y[0, -1], abs=1e-8)


# --- Euler–Maruyama particles against the exact expectation of the discrete scheme ----------
def em_moment_recursion(drift_matrix, forcing, mean0, cov0, beta, dt, steps):
    """Exact mean and covariance of EM for dX = −M(X − f(t))dt + √(2/β)dW after ``steps``.

    EM is linear in X here, so E X_{k+1} = (I − dt M) E X_k + dt M f(k dt) and
    Cov_{k+1} = (I − dt M) Cov_k (I − dt M)ᵀ + (2 dt/β) I, exactly.
    """
    d = mean0.shape[0]
    step = np.eye(d) - dt * drift_matrix
    mean, cov = mean0.copy(), cov0.copy()
    for k in range(steps):
        mean = step @ mean + dt * drift_matrix @ forcing(k * dt)
        cov = step @ cov @ step.T + 2.0 * dt / beta * np.eye(d)
    return mean, cov


def assert_within_standard_errors(x, mean, cov):
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < K_SE * se_mean), (x.mean(axis=0), mean)
    se_cov = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
    assert np.all(np.abs(np.cov(x.T) - cov) < K_SE * se_cov)


def test_em_moving_trap_particles_match_the_discrete_scheme_and_it_the_closed_form():
    task = MovingTrap(seed(7), dim=2)
    times = (0.5, 1.0)
    m0, c0 = task.initial_gaussian()
    # a coarse step, so that the scheme's O(dt) terms (∇V at the start of the step,
    # not its end: 0.054 at t = 1) stand well above the particles' noise (SE 0.006)
    dt = 2e-2
    x = run_em(task, times, 20000, dt)
    for t in times:
        steps = int(round(t / dt))
        mean_dt, cov_dt = em_moment_recursion(task.A, task.centre, m0, c0, task.beta, dt, steps)
        assert_within_standard_errors(x[t], mean_dt, cov_dt)
    # the scheme tends to the closed form at first order: halving dt halves the gap
    for t in times:
        gaps = [np.linalg.norm(em_moment_recursion(task.A, task.centre, m0, c0, task.beta, h,
                                                   int(round(t / h)))[0] - task.marginal(t)[0])
                for h in (2e-3, 1e-3)]
        assert 1.8 < gaps[0] / gaps[1] < 2.2
    # without the time dependence the particles would sit near b(0) = (2, 0): far off
    assert np.linalg.norm(x[1.0].mean(axis=0) - task.centre(0.0)) > 1.0


def test_em_aggregation_particles_match_the_discrete_scheme_and_it_the_closed_form():
    task = Aggregation(seed(8), dim=3)
    dt, t = 2e-3, 0.5
    x = run_em(task, (t,), 20000, dt)[t]
    m0, c0 = task.initial_gaussian()
    steps = int(round(t / dt))
    mean_dt, _ = em_moment_recursion(task.A, lambda s: task.c, m0, c0, task.beta, dt, steps)
    _, cov_dt = em_moment_recursion(task.A + task.B, lambda s: np.zeros(3), m0, c0, task.beta,
                                    dt, steps)
    # N particles interact with their own mean: the particles' spread is (1 − 1/N) of the
    # McKean–Vlasov one, far below the tolerance at N = 20000
    assert_within_standard_errors(x, mean_dt, cov_dt)
    mean, cov = task.marginal(t)
    assert np.linalg.norm(cov_dt - cov) < 2 * dt * np.linalg.norm(cov)
    assert np.linalg.norm(mean_dt - mean) < 2 * dt * np.linalg.norm(mean - m0)


def test_em_pairwise_interaction_path_equals_the_shortcut():
    class PairwiseAggregation(Aggregation):
        def interaction_field(self, x, y):  # the contract's default: the pairwise sum
            return FreeEnergyTask.interaction_field(self, x, y)

    short = run_em(Aggregation(seed(9), dim=2), (0.02,), 300, 1e-3, entropy=4)[0.02]
    pair = run_em(PairwiseAggregation(seed(9), dim=2), (0.02,), 300, 1e-3, entropy=4)[0.02]
    np.testing.assert_allclose(pair, short, rtol=0, atol=1e-12)


@pytest.mark.slow
def test_em_aggregation_at_d32_matches_the_closed_form():
    """The largest aggregation size against 20,000 interacting particles (18 s on one core)."""
    task = Aggregation(seed(10), dim=32)
    dt, t = 1e-3, 1.0
    x = run_em(task, (t,), 20000, dt)[t]
    m0, c0 = task.initial_gaussian()
    steps = int(round(t / dt))
    mean_dt, _ = em_moment_recursion(task.A, lambda s: task.c, m0, c0, task.beta, dt, steps)
    _, cov_dt = em_moment_recursion(task.A + task.B, lambda s: np.zeros(32), m0, c0,
                                    task.beta, dt, steps)
    assert_within_standard_errors(x, mean_dt, cov_dt)


# --- em unchanged on the tasks it ran before ----------------------------------------------
#: (sum of x, sum of x², x[0][:3]) after the run, recorded with the pre-change solvers/em.py
EM_BEFORE = {
    ("ou", 0.05): (-6.776649497949379, 148.67871227068184,
                   [0.14382028282470566, 1.2770200460065277, 1.2887568331253256]),
    ("ou", 0.1): (-19.050942462050998, 149.5016324089856,
                  [0.21639283396903847, 1.1344092227574603, 1.204519181625239]),
    ("double_well", 0.1): (63.16412883876289, 60.26018584883934,
                           [1.0419425301715604, 0.8184729724098412]),
    ("bayesian_logreg", 0.005): (79.30856213672917, 363.0552380512827,
                                 [0.33444396350557054, -0.7011979046815846,
                                  0.3720658129618995]),
}


def em_cases():
    from tasks.bayesian_logreg import BayesianLogReg
    from tasks.double_well import DoubleWell

    return [(OrnsteinUhlenbeck(seed(3), dim=3), {"n_particles": 50, "dt": 1e-2}, [0.05, 0.1]),
            (DoubleWell(seed(4), dim=2, beta=2.0), {"n_particles": 40, "dt": 1e-2}, [0.1]),
            (BayesianLogReg(seed(5), dataset="synthetic"),
             {"n_particles": 20, "dt": 1e-3, "batch_size": 16}, [0.005])]


def test_em_is_unchanged_on_the_existing_tasks():
    for task, params, times in em_cases():
        solver = EulerMaruyama(**params)
        solver.setup(task, times, np.random.SeedSequence(11), RunContext())
        results = solver.run()
        for t in times:
            x = results[t].samples
            total, square, first = EM_BEFORE[(task.name, t)]
            # same arithmetic on the same stream: equal up to BLAS rounding differences
            assert float(x.sum()) == pytest.approx(total, rel=1e-12, abs=1e-12)
            assert float((x ** 2).sum()) == pytest.approx(square, rel=1e-12)
            np.testing.assert_allclose(x[0][:3], first, rtol=1e-12)


def test_the_runner_writes_a_skipped_row_naming_the_missing_term(gfbench, tmp_path):
    """End to end: a solver without ``supports`` on a task with an interaction is a
    ``skipped`` row (one per time) whose reason names the term; the oracle runs."""
    import pandas as pd

    out = tmp_path / "out"
    code, _, err = gfbench("run", "--task", "aggregation", "-P", "aggregation.dim=2",
                           "--solver", "svgd", "--solver", "dual_jko", "--solver", "exact",
                           "-P", "dual_jko.basis=poly",
                           "--times", "0.25,0.5", "--seeds", "1", "--metrics", "energy",
                           "--quiet", "--no-report", "--out", out)
    assert code == 0, err
    rows = pd.read_csv(out / "results.csv")
    dual = rows[rows.solver == "dual_jko"]
    assert len(dual) == 2 and (dual.status == "skipped").all()
    assert dual.error.str.contains("interaction term").all()
    assert dual.error.str.contains("'aggregation'").all()
    assert (rows[rows.solver == "exact"].status == "ok").all()
