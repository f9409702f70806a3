"""The Chang–Cooper (1970) finite-difference scheme for the 1-D Fokker–Planck equation.

∂ρ/∂t = ∂x(ρΦ' + β⁻¹∂xρ) on ``n_grid`` uniform nodes of [−L, L], zero-flux walls.
The flux through the face between nodes i and i+1 is

    G = B[(1 − δ)ρ_{i+1} + δρ_i] + β⁻¹(ρ_{i+1} − ρ_i)/Δx,

with B = (Φ_{i+1} − Φ_i)/Δx (Φ' at the face to second order) and the classic
weight δ = 1/w − 1/(eʷ − 1), w = βBΔx. This weight makes G vanish exactly
when ρ_{i+1}/ρ_i = e^{−β(Φ_{i+1} − Φ_i)}, so the discrete stationary state is
exactly the normalised exp(−βΦ) at the nodes, and positivity is kept. Where
w → 0 the weight comes from its series (δ = ½ − w/12 + w³/720), never from
the 0/0 of the original's equilibrium-ratio form.

Time stepping is implicit Euler: (I − Δt·L)ρ^{k+1} = ρ^k with one tridiagonal
LU factorisation (LAPACK gttrf) reused for every step. The columns of L sum
to zero (the face fluxes telescope), so the discrete mass Σρ·Δx is conserved
to round-off; nothing is renormalised, except by Bayes updates (filtering),
which renormalise by definition.

This is the numerical core shared by the ``chang_cooper`` solver and the
``filtering_1d`` task's reference; the reference is validated in the tests
against a discretisation that shares no code with it.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.linalg.lapack import dgttrf, dgttrs

from numerics.timesteps import steps_to_times

#: log-density of points outside the grid, where the grid law has no mass
LOG_ZERO = float(np.log(1e-300))


# --- the scheme ---------------------------------------------------------------
def chang_cooper_weight(w: np.ndarray) -> np.ndarray:
    """δ(w) = 1/w − 1/(eʷ − 1) ∈ (0, 1), with its series near w = 0 (δ(0) = ½).

    Parameters
    ----------
    w : ndarray
        β·B·Δx at each face (any shape).

    Returns
    -------
    ndarray of the same shape, float64.
    """
    w = np.asarray(w, dtype=np.float64)
    small = np.abs(w) < 1e-3
    safe = np.where(small, 1.0, w)
    with np.errstate(over="ignore"):  # expm1 → inf gives the right limit δ → 1/w
        exact = 1.0 / safe - 1.0 / np.expm1(safe)
    series = 0.5 - w / 12.0 + w**3 / 720.0  # next term w⁵/30240 < 1e-19 here
    return np.where(small, series, exact)


def operator_bands(potential_nodes: np.ndarray, dx: float, beta: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tridiagonal Fokker–Planck operator L (dρ/dt = Lρ) with zero-flux walls.

    Parameters
    ----------
    potential_nodes : ndarray (n,)
        Φ at the grid nodes.
    dx : float
        Grid spacing.
    beta : float
        Inverse temperature.

    Returns
    -------
    lower, diag, upper : ndarray (n-1,), (n,), (n-1,)
        ``lower[i] = L[i+1, i]``, ``diag[i] = L[i, i]``, ``upper[i] = L[i, i+1]``.
    """
    phi = np.asarray(potential_nodes, dtype=np.float64)
    diffusion = 1.0 / beta
    drift = np.diff(phi) / dx                      # B at the n-1 faces
    delta = chang_cooper_weight(beta * drift * dx)
    # face flux G_{i+½} = up_i ρ_{i+1} + own_i ρ_i
    up = drift * (1.0 - delta) + diffusion / dx
    own = drift * delta - diffusion / dx
    # row i of L is (G_{i+½} − G_{i−½}) / Δx; the walls have G = 0
    diag = np.zeros(phi.size)
    diag[:-1] += own / dx
    diag[1:] -= up / dx
    return -own / dx, diag, up / dx


def implicit_euler_factor(bands: tuple[np.ndarray, np.ndarray, np.ndarray], dt: float):
    """LU factors of (I − Δt·L), for :func:`evolve_density`."""
    lower, diag, upper = bands
    dl, d, du, du2, ipiv, info = dgttrf(-dt * lower, 1.0 - dt * diag, -dt * upper)
    if info != 0:
        raise np.linalg.LinAlgError(f"implicit Euler matrix is singular (gttrf info={info})")
    return dl, d, du, du2, ipiv


def evolve_density(density: np.ndarray, factor, n_steps: int,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """``n_steps`` implicit Euler steps of a grid density.

    Parameters
    ----------
    density : ndarray (n,)
        ρ^0 at the nodes (not modified).
    factor : tuple
        From :func:`implicit_euler_factor`.
    n_steps : int
    progress : callable, optional
        Called with the number of steps done, every 500 steps.

    Returns
    -------
    ndarray (n,)
        ρ^{n_steps}; its sum is that of ``density`` up to round-off.
    """
    dl, d, du, du2, ipiv = factor
    rho = np.array(density, dtype=np.float64)
    for k in range(n_steps):
        rho, info = dgttrs(dl, d, du, du2, ipiv, rho)
        if progress is not None and (k + 1) % 500 == 0:
            progress(k + 1)
    return rho


def bayes_update(density: np.ndarray, log_likelihood: np.ndarray, dx: float) -> np.ndarray:
    """Posterior on the grid: ρ·exp(log-likelihood), renormalised to Σρ·Δx = 1.

    Works in log space so that an unlikely observation cannot underflow to 0/0.
    """
    with np.errstate(divide="ignore"):
        log_post = np.log(density) + np.asarray(log_likelihood, dtype=np.float64)
    post = np.exp(log_post - np.max(log_post))
    return post / (post.sum() * dx)


def solve_on_grid(potential: Callable[[np.ndarray], np.ndarray], beta: float,
                  initial_log_density: Callable[[np.ndarray], np.ndarray],
                  half_width: float, n_grid: int, dt: float, times: Sequence[float],
                  updates: Sequence[tuple[float, Callable[[np.ndarray], np.ndarray]]] = (),
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Chang–Cooper densities at ``times``, with Bayes updates on the way.

    Parameters
    ----------
    potential : callable
        Φ for ``(m, 1)`` points → ``(m,)`` (a task's ``potential``).
    beta : float
        Inverse temperature.
    initial_log_density : callable
        ``(m, 1) -> (m,)`` log ρ0; ρ0 is tabulated and normalised on the grid.
    half_width, n_grid, dt : float, int, float
        Grid of ``n_grid`` nodes on [−half_width, half_width]; time step.
    times : sequence of float
        Evaluation times, multiples of ``dt``.
    updates : sequence of (t, log_likelihood)
        At time ``t`` (a multiple of ``dt``) the density is multiplied by
        ``exp(log_likelihood(grid (n, 1)))`` and renormalised. An update at an
        evaluation time is included in that evaluation; updates after the last
        evaluation time are ignored.
    progress : callable, optional
        ``progress(steps done, total steps)``.

    Returns
    -------
    grid : ndarray (n_grid,)
    densities : dict float -> ndarray (n_grid,)
        Node values with Σρ·Δx = 1 (exactly at t = 0 and after each update;
        to round-off otherwise).
    """
    times = sorted(float(t) for t in times)
    grid = np.linspace(-half_width, half_width, int(n_grid))
    dx = float(grid[1] - grid[0])
    nodes = grid[:, None]
    factor = implicit_euler_factor(
        operator_bands(np.asarray(potential(nodes), dtype=np.float64).reshape(-1), dx, beta), dt)
    rho = np.exp(np.asarray(initial_log_density(nodes), dtype=np.float64).reshape(-1))
    rho /= rho.sum() * dx

    eval_steps = steps_to_times(times, dt)
    last = eval_steps[-1]
    # (step, kind, payload): updates sort before evaluations at the same step
    events = [(k, 0, fn) for k, fn in zip(steps_to_times([u[0] for u in updates], dt),
                                          (u[1] for u in updates)) if k <= last]
    events += [(k, 1, t) for k, t in zip(eval_steps, times)]
    events.sort(key=lambda e: (e[0], e[1]))

    out: dict[float, np.ndarray] = {}
    step = 0
    for k, kind, payload in events:
        done = step
        rho = evolve_density(rho, factor, k - step,
                             None if progress is None else lambda j: progress(done + j, last))
        step = k
        if kind == 0:
            rho = bayes_update(rho, payload(nodes), dx)
        else:
            out[payload] = rho.copy()
    return grid, out


# --- the grid law ---------------------------------------------------------------
def grid_law(grid: np.ndarray, density: np.ndarray):
    """Log-density and sampler of the piecewise-linear interpolant of a grid density.

    The interpolant of ``max(density, 0)`` is normalised by the trapezoid rule
    so that it integrates to exactly one over [grid[0], grid[-1]]; outside the
    grid it is zero (``log_density`` gives ``LOG_ZERO`` there).

    Parameters
    ----------
    grid : ndarray (n,)
        Uniform, increasing nodes.
    density : ndarray (n,)
        Non-negative node values (any normalisation).

    Returns
    -------
    log_density : callable
        ``(m, 1) -> (m,)``.
    sample : callable
        ``sample(n, rng) -> (n, 1)``, exact inverse-CDF draws of the interpolant.
    """
    grid = np.asarray(grid, dtype=np.float64)
    p = np.maximum(np.asarray(density, dtype=np.float64), 0.0)
    dx = float(grid[1] - grid[0])
    cell_mass = 0.5 * dx * (p[:-1] + p[1:])
    total = cell_mass.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("grid density has no finite positive mass")
    p = p / total
    cell_mass = cell_mass / total
    cdf = np.concatenate([[0.0], np.cumsum(cell_mass)])
    floor = np.exp(LOG_ZERO)

    def log_density(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return np.log(np.maximum(np.interp(x, grid, p, left=0.0, right=0.0), floor))

    def sample(n: int, rng: np.random.Generator) -> np.ndarray:
        u = rng.random(n) * cdf[-1]
        cell = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, grid.size - 2)
        r = np.maximum(u - cdf[cell], 0.0)
        p0, slope = p[cell], (p[cell + 1] - p[cell]) / dx
        # solve p0·s + slope·s²/2 = r for s in [0, dx], in the cancellation-free form
        root = np.sqrt(np.maximum(p0 * p0 + 2.0 * slope * r, 0.0))
        denom = p0 + root
        s = np.where(denom > 0, 2.0 * r / np.where(denom > 0, denom, 1.0), 0.0)
        return (grid[cell] + np.clip(s, 0.0, dx))[:, None]

    return log_density, sample
