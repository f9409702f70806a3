"""A rotated product of tilted 1-D double wells: a non-Gaussian transient in any D.

Φ(x) = Σᵢ φ_{k(i)}((Qx)ᵢ),  φ_k(u) = a_k(u² − 1)² + c_k u,  k(i) = i mod 4,

with Q a Haar-random rotation (SO(D), from the task seed; ``rotation=
"identity"`` gives Q = I, and at D = 1 it is I anyway) and the four wells

    k   a_k    c_k    m_k     Δφ (start well / other)   right-well mass, t = 0; ∞ (β = 1 / 2)
    0   1.00  +0.30   +1.00   0.72 / 1.32               1.00; 0.38 / 0.26
    1   1.25  −0.25   −0.50   1.01 / 1.51               0.05; 0.60 / 0.71
    2   0.75  −0.20   −1.00   0.56 / 0.96               0.00; 0.58 / 0.66
    3   1.50  +0.40   +0.75   1.12 / 1.92               0.99; 0.34 / 0.19

(the tilt c_k makes the wells unequal; every ρ0 starts on the side of the
shallower well, so mass leaks over the barrier into the deeper one).
ρ0 = N(Qᵀm, 0.3² I): isotropic, centred off the origin in the rotated frame.
Both Φ and ρ0 factor over the coordinates u = Qx, so ρ_t is the product of
the 1-D Fokker–Planck solutions of each well (Q is orthogonal: it preserves
the Laplacian and its Jacobian is 1). β is a task parameter (1 and 2 in the
default grid).

Why it is a transient test. The barriers are low (βΔφ = 0.6 … 2.2 from the
start wells) but each well's generator separates its time scales: the two
slowest rates (Chang–Cooper eigenvalues) are λ₂ = 0.77 / 0.69 / 0.82 / 0.63 at
β = 1 and 0.25 / 0.18 / 0.31 / 0.15 at β = 2, against λ₃ ≥ 5.4 and ≥ 3.6
(λ₃/λ₂ = 7 … 36): within a well the law relaxes in ~0.2, between wells in
1.2 … 6.7. So at the default times the mass of each well is neither the
initial one nor the stationary one — right-well mass per well k (reference,
t = 0.5 / 1.0):

    β = 1:  k0 0.82 / 0.68   k1 0.29 / 0.38   k2 0.18 / 0.31   k3 0.79 / 0.67
    β = 2:  k0 0.93 / 0.85   k1 0.19 / 0.24   k2 0.07 / 0.16   k3 0.91 / 0.86

and the law in D dimensions has up to 2^D modes with unequal, time-dependent
masses (a Gaussian approximation, a mode-collapsed sampler or a solver that
jumps to ρ* are all visibly wrong).

Reference (numerics/product_law.py): the four 1-D problems are solved with the
project's Chang–Cooper scheme (numerics/chang_cooper.py) on [−3.5, 3.5],
Δx = 0.01 (701 nodes), implicit Euler Δt = 1e-3, all wells stacked into one
tridiagonal system; each factor is the normalised piecewise-linear interpolant
of its grid density, so sampling is exact inverse-CDF per rotated coordinate
(then x = Qᵀu) and the log-density is the exact log of the same law,
Σᵢ log p_{k(i)}((Qx)ᵢ). The 1-D solves do not depend on D or on the seed
(only on β and t), so a reference costs the same at D = 2 and D = 64 (about
0.15 s with its error estimate, cached per instance).

Its error, by refinement, per well: S_t = grid SymKL to a run with Δt/2 and
S_x = grid SymKL to a run with 2Δx on the wider [−4.5, 4.5]. Implicit Euler is
first order in time and Chang–Cooper second order in space, so the halved
step removes half the time error and the doubled cell triples the space error;
the well's error is bounded by e_k = (2√S_t + √S_x/3)² (amplitudes add, and
SymKL is quadratic in them), and SymKL is additive over independent
coordinates, so ``error_estimate`` = Σᵢ e_{k(i)}. Measured (the same for
every task seed): e_k ≤ 1.0e-6 at t = 0.5 and ≤ 2.7e-7 at t = 1 (β = 1 and 2);
at D = 64 the estimate is 1.5e-5 / 8.1e-6 (β = 1, t = 0.5 / 1) and 3.9e-5 / 1.2e-5 (β = 2).
Against a run with Δx/4 and Δt/8 the actual errors are ≤ 3.7e-7 per well, and
the estimate exceeds them by 2.6 … 115× (the tests check that it bounds them).
Both are far below any solver's error at these sizes.

Reference checks that share no code with it (tests/test_double_well.py): a
2-D finite-volume solution of the full, non-separable rotated problem on a
Cartesian grid, and Euler–Maruyama particles at D = 8.
"""
from __future__ import annotations

import numpy as np

from numerics.chang_cooper import grid_law
from numerics.product_law import gaussian_nodes, grid_symkl, product_grid_law, solve_wells
from tasks.base import Reference, Task

#: the wells φ_k(u) = a_k(u² − 1)² + c_k u, and where ρ0 starts in each, m_k
WELL_A = np.array([1.00, 1.25, 0.75, 1.50])
WELL_C = np.array([0.30, -0.25, -0.20, 0.40])
WELL_START = np.array([1.00, -0.50, -1.00, 0.75])
#: standard deviation of ρ0 along every axis
INITIAL_STD = 0.3
#: the reference's 1-D grid and time step
HALF_WIDTH, DX, DT = 3.5, 0.01, 1e-3
#: the space check's wider domain (at 2Δx): it also sees the walls
CHECK_HALF_WIDTH = 4.5


def well_potential(u: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """φ(u) = a(u² − 1)² + cu elementwise (a, c broadcast against u)."""
    return a * (u * u - 1.0) ** 2 + c * u


def well_derivative(u: np.ndarray, a: np.ndarray, c: np.ndarray) -> np.ndarray:
    """φ'(u) = 4au(u² − 1) + c elementwise."""
    return 4.0 * a * u * (u * u - 1.0) + c


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed rotation ``(dim, dim)`` of SO(dim) (QR of a Gaussian matrix).

    The signs of R's diagonal are moved into Q so that Q is Haar on O(dim);
    one column flip then puts it in SO(dim) (the law of Φ is the same either
    way; a rotation is the conventional choice).
    """
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def well_grid(half_width: float, dx: float) -> np.ndarray:
    """Uniform nodes of [−half_width, half_width] with spacing ``dx`` (0 is a node)."""
    n = int(round(2.0 * half_width / dx)) + 1
    return np.linspace(-half_width, half_width, n)


def well_solutions(kinds: np.ndarray, beta: float, times: tuple[float, ...], half_width: float,
                   dx: float, dt: float) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Chang–Cooper densities of the wells ``kinds`` from their Gaussian starts.

    Returns
    -------
    grid : ndarray (n,)
    densities : dict float -> ndarray (len(kinds), n)
    """
    grid = well_grid(half_width, dx)
    kinds = np.asarray(kinds, dtype=np.int64)
    phi = well_potential(grid[None, :], WELL_A[kinds, None], WELL_C[kinds, None])
    rho0 = gaussian_nodes(grid, WELL_START[kinds], INITIAL_STD)
    return grid, solve_wells(phi, rho0, grid[1] - grid[0], beta, dt, times)


def right_mass(grid: np.ndarray, density: np.ndarray) -> np.ndarray:
    """Mass on u > 0 of each row's normalised interpolant (trapezoid; 0 must be a node)."""
    density = np.atleast_2d(density)
    cells = 0.5 * (density[:, 1:] + density[:, :-1]) * np.diff(grid)
    return cells[:, grid[1:] > 1e-12].sum(axis=1) / cells.sum(axis=1)


def stationary_right_mass(beta: float, kinds: np.ndarray) -> np.ndarray:
    """Right-well mass of the Gibbs law ∝ exp(−βφ_k) of each well (fine trapezoid rule)."""
    u = np.linspace(-6.0, 6.0, 120001)
    kinds = np.asarray(kinds, dtype=np.int64)
    log_w = -beta * well_potential(u[None, :], WELL_A[kinds, None], WELL_C[kinds, None])
    return right_mass(u, np.exp(log_w - log_w.max(axis=1, keepdims=True)))


def interpolant_on(grid: np.ndarray, other_grid: np.ndarray, density: np.ndarray) -> np.ndarray:
    """The normalised interpolant of ``density`` (on ``other_grid``) at the nodes ``grid``."""
    return np.exp(grid_law(other_grid, density)[0](grid))


class DoubleWell(Task):
    name = "double_well"
    version = "1"
    parameters = {"dim": [2, 8, 32], "beta": [1.0, 2.0], "rotation": ["random"]}
    default_times = (0.5, 1.0)
    description = ("rotated product of tilted 1-D double wells from an off-centre Gaussian: "
                   "metastable, multimodal transient; Chang-Cooper product reference")
    ranking_metrics = ("energy", "symkl")
    bounds = {"dim": (1, 64), "beta": (0.5, 4.0)}

    def __init__(self, seed: np.random.SeedSequence, dim: int = 2, beta: float = 1.0,
                 rotation: str = "random") -> None:
        super().__init__(seed, dim=dim, beta=beta, rotation=rotation)
        self.validate_params(self.params)
        self.dim = int(dim)
        self.beta = float(beta)
        rng = np.random.default_rng(seed)
        self.Q = (random_rotation(self.dim, rng) if rotation == "random" and self.dim > 1
                  else np.eye(self.dim))
        self.kinds = np.arange(self.dim) % WELL_A.size      # well of each rotated coordinate
        self.wells = np.unique(self.kinds)                   # the distinct wells present
        self.a, self.c = WELL_A[self.kinds], WELL_C[self.kinds]
        self.mean0 = WELL_START[self.kinds] @ self.Q         # x = Qᵀu for rows: u @ Q
        self._densities: dict[float, np.ndarray] = {}
        self._errors: dict[float, np.ndarray] = {}
        self._references: dict[float, Reference] = {}

    @classmethod
    def validate_params(cls, params) -> None:
        super().validate_params(params)
        dim = params.get("dim", 2)
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"task 'double_well': dim must be an integer >= 1, got {dim!r}")
        beta = params.get("beta", 1.0)
        if not isinstance(beta, (int, float, np.integer, np.floating)) or isinstance(beta, bool) \
                or not np.isfinite(beta):
            raise ValueError(f"task 'double_well': beta must be a number, got {beta!r}")
        rotation = params.get("rotation", "random")
        if rotation not in ("random", "identity"):
            raise ValueError("task 'double_well': rotation must be 'random' or 'identity', "
                             f"got {rotation!r}")

    # potential -----------------------------------------------------------------
    def rotated(self, x: np.ndarray) -> np.ndarray:
        """u = Qx for each row of ``x (n, dim)`` -> ``(n, dim)``."""
        return np.asarray(x, dtype=np.float64) @ self.Q.T

    def potential(self, x):
        return well_potential(self.rotated(x), self.a, self.c).sum(axis=1)

    def grad_potential(self, x):
        return well_derivative(self.rotated(x), self.a, self.c) @ self.Q

    def _torch_constants(self, x):
        import torch

        return tuple(torch.as_tensor(v, dtype=x.dtype, device=x.device)
                     for v in (self.Q, self.a, self.c))

    def potential_torch(self, x, batch=None):
        q, a, c = self._torch_constants(x)
        u = x @ q.T
        return (a * (u * u - 1.0) ** 2 + c * u).sum(dim=1)

    def grad_potential_torch(self, x, batch=None):
        q, a, c = self._torch_constants(x)
        u = x @ q.T
        return (4.0 * a * u * (u * u - 1.0) + c) @ q

    # initial law -----------------------------------------------------------------
    def sample_initial(self, n, rng):
        return self.mean0 + INITIAL_STD * rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        z = (np.asarray(x, dtype=np.float64) - self.mean0) / INITIAL_STD
        return -0.5 * (np.sum(z * z, axis=1)
                       + self.dim * np.log(2.0 * np.pi * INITIAL_STD ** 2))

    # reference -------------------------------------------------------------------
    def well_densities(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """The reference's grid ``(n,)`` and node densities ``(len(self.wells), n)`` at ``t``."""
        t = float(t)
        if t not in self._densities:
            # one pass serves every default time; another time is solved on its own
            times = self.default_times if t in self.default_times else (t,)
            grid, out = well_solutions(self.wells, self.beta, times, HALF_WIDTH, DX, DT)
            self._densities.update(out)
        return well_grid(HALF_WIDTH, DX), self._densities[t]

    def well_errors(self, t: float) -> np.ndarray:
        """Refinement error bound e_k ``(len(self.wells),)`` of each well at ``t`` (docstring)."""
        t = float(t)
        if t not in self._errors:
            times = self.default_times if t in self.default_times else (t,)
            grid = well_grid(HALF_WIDTH, DX)
            _, halved_dt = well_solutions(self.wells, self.beta, times, HALF_WIDTH, DX, DT / 2)
            wide, doubled_dx = well_solutions(self.wells, self.beta, times, CHECK_HALF_WIDTH,
                                              2 * DX, DT)
            for s in times:
                base = self.well_densities(s)[1]
                errors = []
                for j in range(self.wells.size):
                    p = interpolant_on(grid, grid, base[j])
                    s_t = grid_symkl(grid, p, interpolant_on(grid, grid, halved_dt[s][j]))
                    s_x = grid_symkl(grid, p, interpolant_on(grid, wide, doubled_dx[s][j]))
                    errors.append((2.0 * np.sqrt(max(s_t, 0.0))
                                   + np.sqrt(max(s_x, 0.0)) / 3.0) ** 2)
                self._errors[float(s)] = np.array(errors)
        return self._errors[t]

    def right_well_mass(self, t: float) -> np.ndarray:
        """Reference mass on (Qx)ᵢ > 0 of each distinct well ``(len(self.wells),)``."""
        if float(t) == 0.0:
            grid = well_grid(HALF_WIDTH, DX)
            return right_mass(grid, gaussian_nodes(grid, WELL_START[self.wells], INITIAL_STD))
        return right_mass(*self.well_densities(t))

    def reference(self, t):
        t = float(t)
        if t not in self._references:
            self._references[t] = self._build_reference(t)
        return self._references[t]

    def _build_reference(self, t: float) -> Reference:
        grid, densities = self.well_densities(t)
        # rows of ``densities`` are the distinct wells; index them by position
        position = np.searchsorted(self.wells, self.kinds)
        log_density, sample = product_grid_law(grid, densities, position, self.Q)
        counts = np.bincount(position, minlength=self.wells.size)
        error = float(counts @ self.well_errors(t))
        masses = self.right_well_mass(t)
        provenance = (
            f"product over the {self.dim} rotated coordinates of 1-D Chang-Cooper solutions "
            f"({self.wells.size} distinct wells; [-{HALF_WIDTH:g}, {HALF_WIDTH:g}], dx={DX:g}, "
            f"implicit Euler dt={DT:g}); exact inverse-CDF samples and log-density of the "
            f"piecewise-linear interpolants; error_estimate = sum over coordinates of "
            f"(2 sqrt(S_dt/2) + sqrt(S_2dx)/3)^2 = {error:.1e} (grid SymKL to runs with dt/2 "
            f"and with 2dx on [-{CHECK_HALF_WIDTH:g}, {CHECK_HALF_WIDTH:g}])")
        extras = {f"right_well_mass_{k}": float(m) for k, m in zip(self.wells, masses)}
        one_d = self.dim == 1  # a 1-D law is also given on its grid (grid metrics, figures)
        return Reference(t=t, sample=sample, log_density=log_density, provenance=provenance,
                         error_estimate=error, extras=extras,
                         grid=grid if one_d else None,
                         density=np.exp(log_density(grid[:, None])) if one_d else None)

    def has_closed_form(self) -> bool:
        """The oracle opt-in (solvers/exact.py): the oracle returns this reference law.

        As for ``stationary_gmm``'s ρ*, the oracle's samples and density are the
        reference's own (a metric noise floor, rank 1 by construction). The law
        is numerical, with its error in ``error_estimate``; no Gaussian opt-in
        (``quadratic_potential``, ``initial_gaussian``, reference moments) is
        claimed, so the Gaussian-only solvers and metrics skip this task.
        """
        return True
