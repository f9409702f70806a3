"""Fokker–Planck laws that factor over the coordinates of an orthogonal frame.

If Φ(x) = Σᵢ φ_{k(i)}((Qx)ᵢ) with Q orthogonal and ρ0 factors over the same
coordinates u = Qx, then so does ρ_t (the generator is a sum of commuting 1-D
generators and Q preserves the Laplacian), and each factor is the 1-D
Fokker–Planck solution of its own well φ_k. The D-dimensional law is then
known from K ≤ D one-dimensional solves, one per distinct well ``k``, which
this module runs side by side.

Solver: the project's Chang–Cooper core (numerics/chang_cooper.py), one
tridiagonal operator per well stacked block-diagonally (no face between two
blocks), so that one LAPACK call per implicit Euler step advances every well
at once; mass is conserved block by block and positivity is kept, as in 1-D.

Law: each factor is the normalised piecewise-linear interpolant of its grid
density (``chang_cooper.grid_law``: exact inverse-CDF draws, exact log of the
interpolant), so the product law's samples and log-density are those of one
and the same law; the Jacobian of an orthogonal Q is 1.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from numerics.chang_cooper import evolve_density, grid_law, implicit_euler_factor, operator_bands


# --- the 1-D solves ------------------------------------------------------------
def stacked_bands(potential_nodes: np.ndarray, dx: float, beta: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-diagonal tridiagonal operator of ``k`` independent 1-D wells.

    Parameters
    ----------
    potential_nodes : ndarray (k, n)
        Each well's potential at the ``n`` shared grid nodes.
    dx : float
        Grid spacing.
    beta : float
        Inverse temperature.

    Returns
    -------
    lower, diag, upper : ndarray (k·n − 1,), (k·n,), (k·n − 1,)
        The Chang–Cooper bands of every well, end to end, with zero coupling
        between the last node of one well and the first of the next.
    """
    phi = np.atleast_2d(np.asarray(potential_nodes, dtype=np.float64))
    k, n = phi.shape
    lower, diag, upper = (np.zeros(k * n - 1), np.zeros(k * n), np.zeros(k * n - 1))
    for b in range(k):
        lo, d, up = operator_bands(phi[b], dx, beta)
        start = b * n
        diag[start:start + n] = d
        lower[start:start + n - 1] = lo
        upper[start:start + n - 1] = up
        # entries start + n - 1 (between wells b and b + 1) stay 0: no flux between wells
    return lower, diag, upper


def step_schedule(times: Sequence[float], dt: float) -> list[tuple[float, int]]:
    """Implicit Euler steps reaching each of ``times`` exactly, none longer than ``dt``.

    Each interval between consecutive times (from 0) is cut into the fewest
    equal steps of length ≤ ``dt``, so times that are multiples of ``dt`` get
    exactly ``dt`` and any other time is still hit without rounding.

    Returns
    -------
    list of (step length, number of steps), one per interval of sorted ``times``.
    """
    out, previous = [], 0.0
    for t in sorted(float(t) for t in times):
        span = t - previous
        n_steps = max(1, int(np.ceil(span / dt - 1e-9))) if span > 0 else 0
        out.append((span / n_steps if n_steps else dt, n_steps))
        previous = t
    return out


def solve_wells(potential_nodes: np.ndarray, initial_density: np.ndarray, dx: float,
                beta: float, dt: float, times: Sequence[float]) -> dict[float, np.ndarray]:
    """Chang–Cooper densities of ``k`` independent 1-D wells at ``times``.

    Parameters
    ----------
    potential_nodes : ndarray (k, n)
        φ_k at the shared uniform grid nodes.
    initial_density : ndarray (k, n)
        ρ0 of each well at the nodes, each row with Σρ·Δx = 1.
    dx, beta, dt : float
        Grid spacing, inverse temperature, largest time step.
    times : sequence of float
        Evaluation times (> 0; any values, see :func:`step_schedule`).

    Returns
    -------
    dict float -> ndarray (k, n)
        Node densities; each row keeps its mass to round-off and stays ≥ 0.
    """
    rho0 = np.atleast_2d(np.asarray(initial_density, dtype=np.float64))
    k, n = rho0.shape
    bands = stacked_bands(potential_nodes, dx, beta)
    factors: dict[float, tuple] = {}
    rho, out = rho0.reshape(-1).copy(), {}
    for t, (h, n_steps) in zip(sorted(float(t) for t in times), step_schedule(times, dt)):
        key = round(h, 15)  # equal step lengths share one LU factorisation
        if key not in factors:
            factors[key] = implicit_euler_factor(bands, h)
        rho = evolve_density(rho, factors[key], n_steps)
        out[t] = rho.reshape(k, n).copy()
    return out


def gaussian_nodes(grid: np.ndarray, means: np.ndarray, std: float) -> np.ndarray:
    """N(mₖ, std²) on ``grid (n,)`` for each of k means, rows with Σρ·Δx = 1 -> (k, n)."""
    z = (grid[None, :] - np.asarray(means, dtype=np.float64)[:, None]) / std
    rho = np.exp(-0.5 * z * z)
    return rho / (rho.sum(axis=1, keepdims=True) * (grid[1] - grid[0]))


def grid_symkl(grid: np.ndarray, p: np.ndarray, q: np.ndarray) -> float:
    """SymKL between two densities on the same 1-D grid, by the trapezoid rule."""
    tiny = 1e-300
    return float(np.trapezoid((p - q) * (np.log(p + tiny) - np.log(q + tiny)), grid))


# --- the product law --------------------------------------------------------------
def product_grid_law(grid: np.ndarray, densities: np.ndarray, kinds: np.ndarray,
                     rotation: np.ndarray
                     ) -> tuple[Callable[[np.ndarray], np.ndarray],
                                Callable[[int, np.random.Generator], np.ndarray]]:
    """Log-density and sampler of x = Qᵀu with independent uᵢ ~ p_{k(i)}.

    Parameters
    ----------
    grid : ndarray (n,)
        Uniform nodes shared by every factor.
    densities : ndarray (K, n)
        Node densities of the K distinct factors (any normalisation: each is
        normalised as its piecewise-linear interpolant, ``grid_law``).
    kinds : ndarray (D,) int
        Factor of each rotated coordinate, values in 0 … K−1.
    rotation : ndarray (D, D)
        Orthogonal Q; u = Qx, i.e. ``u = x @ Q.T`` for rows.

    Returns
    -------
    log_density : callable
        ``(m, D) -> (m,)``: Σᵢ log p_{k(i)}((Qx)ᵢ), normalised (|det Q| = 1).
    sample : callable
        ``sample(m, rng) -> (m, D)``: inverse-CDF draws of every uᵢ, rotated back.
    """
    kinds = np.asarray(kinds, dtype=np.int64)
    q = np.asarray(rotation, dtype=np.float64)
    laws = [grid_law(grid, row) for row in np.atleast_2d(densities)]
    # the coordinates of each factor, in a fixed order (the sampler's draw order)
    groups = [(k, np.flatnonzero(kinds == k)) for k in range(len(laws))]
    groups = [(k, idx) for k, idx in groups if idx.size]

    def log_density(x: np.ndarray) -> np.ndarray:
        u = np.atleast_2d(np.asarray(x, dtype=np.float64)) @ q.T
        total = np.zeros(u.shape[0])
        for k, idx in groups:
            logs = laws[k][0](u[:, idx].reshape(-1))            # (m·|idx|,)
            total += logs.reshape(u.shape[0], idx.size).sum(axis=1)
        return total

    def sample(m: int, rng: np.random.Generator) -> np.ndarray:
        u = np.empty((int(m), kinds.size))
        for k, idx in groups:
            u[:, idx] = laws[k][1](int(m) * idx.size, rng).reshape(int(m), idx.size)
        return u @ q

    return log_density, sample
