"""The Euler maps of SBTM's probability flow and the exact change of variables through them.

The density machinery of :mod:`solvers.sbtm`, split from that module unchanged
(same operations in the same order): with the score s_k of step k (a network of
:mod:`numerics.score_net`) one particle step is the map F_k; :class:`EulerMaps`
steps points through it, pushes them through F_0, …, F_{k−1} with the
log-determinants, and inverts the maps to pull points back. The potential enters
only through the callables ∇Φ and ∇²Φ that the solver hands in (no task is
imported); explicit and implicit drift are described in solvers/sbtm.py.

Densities (float64 copies of the stored networks)
-------------------------------------------------
The law the solver returns is the push-forward of ρ0 by the composed Euler
maps F_k(x) = x + dt·v_k(x); its exact density follows from the change of
variables of the *discrete* maps,

    log ρ_{k+1}(F_k(x)) = log ρ_k(x) − log det(I + dt ∇v_k(x)),
    ∇v_k = −∇²Φ − β⁻¹ ∇s_k  (symmetric),

the time-discretisation of d/dt log ρ_t(x_t) = −div v_t that is exact for the
returned law: it integrates to one whatever dt is (measured: |mass − 1| ~ 1e-12
on a 1-D grid), where the first-order −dt·div v would not.

- ``draw(n, rng)`` pushes fresh ρ0 samples through F_0, …, F_{k−1} with the
  log-determinant along the way.
- ``log_density(y)`` runs the same discrete maps backwards (not the reverse
  ODE): at each step it solves x + dt·v_k(x) = y for x by chord-Newton
  iterations (the exact Jacobian I + dt∇v_k factored once at the start
  y − dt·v_k(y), which is O(dt²) away; 2–3 velocity evaluations to 1e-12),
  then subtracts the log-determinant at the solution. So log_density at a
  drawn point equals the log-density draw returned for it (to ~1e-10, tested)
  and pulling the solver's own particles back returns their initial
  positions (tested).
- D ≤ ``exact_dim`` (16): exact Jacobians (∇²Φ in closed form for tasks with
  ``quadratic_potential``, else by D autograd passes) and ``slogdet``. Above it:
  log det(I + dtJ) ≈ dt·vᵀJv − ½dt²|Jv|² with Gaussian probes v (Jv by one
  autograd pass; its mean is dt tr J − ½dt² tr J² since J is symmetric, so
  the bias is O(dt³ tr J³) per step) and the inverse map by fixed-point
  iteration x ← y − dt·v_k(x) (a contraction while dt·‖∇v_k‖ < 1). The
  estimator's variance per step is ≈ 2dt²‖∇v_k‖_F² / ``hutchinson``, so a
  log-density carries a noise of variance ≈ 2·dt·t·‖∇v‖_F² / probes (std 0.01
  on OU D = 3 at t = 0.2 with 400 probes; ∝ 1/√probes); it is applied to ∇v as a
  whole, not to ∇²Φ and ∇s separately, because the two nearly cancel once a
  mode is close to equilibrium. log_density uses a fixed probe stream (a
  deterministic function of its input), draw one derived from its rng; a
  point's two log-densities then differ by that noise.
- A step whose I + dt∇v_k is not positive definite at some point (the Euler
  map folds there: dt too large for the flow) is counted in
  ``info["density_diagnostics"]["density_folds"]`` (cumulative over the calls),
  with non-converged inversions; log |det| is used.
- A point whose inversion does not converge (chord iterations, then full
  Newton steps) has no preimage: it lies outside the image of the maps, where
  the returned law has no mass, and its log-density is −∞ (counted in
  ``unconverged_inversions``), not NaN. With a super-linear drift the explicit
  map is never onto: x − dt∇Φ(x) folds where dt·λ_max(∇²Φ) = 1 (|x| ≈ 1/√(12dt)
  = 2.9 per coordinate of the quartic well of tests/test_generic_potentials.py
  at dt = 1e-2) and its image is bounded (|y| ≲ 2.2 after one step, then
  carried inwards by the flow). On the tilted double well of
  tests/test_generic_potentials.py (1-D factor, t = 0.5, the recipe of
  solvers/sbtm.py) the image was [−1.80, 1.64] against reference
  draws up to 1.68: 1 in 10⁴ reference points had no preimage, 1–2 in 10³ in
  2-D, so the Monte Carlo SymKL (8192 reference draws) was NaN before this
  rule and is +∞ with it. ``drift="implicit"`` removes the cause.
"""
from __future__ import annotations

from typing import Callable

import torch

from numerics.score_net import Params, score_only, score_terms

#: chord-Newton (exact path) and fixed-point (Hutchinson path) inversion: tolerance, caps
INVERT_TOL = 1e-12
NEWTON_MAX = 50
#: full Newton steps on rows the chord iterations leave unconverged: quadratic convergence
#: needs a few where a preimage exists; a point without one would use them all, every step
POLISH_MAX = 12
FIXED_POINT_MAX = 500


class EulerMaps:
    """The maps F_k(x) = x + dt·v_k(x) (or their implicit form) of one run, and their densities.

    Parameters
    ----------
    dt, beta : float
        Time step and inverse temperature.
    dim : int
        Dimension D.
    exact : bool
        Exact Jacobians, ``slogdet`` and chord-Newton inversion (D ≤ ``exact_dim``);
        else Hutchinson log-determinants and fixed-point inversion.
    implicit : bool
        ∇Φ taken at the new point: y + dt∇Φ(y) = x − (dt/β)s_k(x).
    hutchinson : int
        Gaussian probes per log-determinant (Hutchinson path).
    grad_potential, potential_hessian : callable
        ∇Φ ``(n, D) -> (n, D)`` and ∇²Φ ``(n, D) -> (n, D, D)`` on tensors.
    device
        Where the probes are drawn.

    Every method takes the network of a step (or the list of them) as ``params``.
    """

    def __init__(self, dt: float, beta: float, dim: int, exact: bool, implicit: bool,
                 hutchinson: int,
                 grad_potential: Callable[[torch.Tensor], torch.Tensor],
                 potential_hessian: Callable[[torch.Tensor], torch.Tensor],
                 device: str | torch.device = "cpu") -> None:
        self.dt, self.beta, self.dim = dt, beta, dim
        self.exact, self.implicit, self.hutchinson = exact, implicit, hutchinson
        self.grad_potential, self.potential_hessian = grad_potential, potential_hessian
        self.device = device

    def velocity(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """v = −∇Φ − β⁻¹ s at ``x (n, D)``."""
        return -self.grad_potential(x) - score_only(params, x) / self.beta

    def jacobian(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v, ∇v) at ``x (n, D)``: ``(n, D)``, ``(n, D, D)`` (exact path)."""
        score, _, hess = score_terms(params, x, hessian=True)
        vel = -self.grad_potential(x) - score / self.beta
        return vel, -self.potential_hessian(x) - hess / self.beta

    def logdet_exact(self, jac: torch.Tensor) -> tuple[torch.Tensor, int]:
        """log |det(I + dt·jac)| ``(n,)`` and the number of non-positive determinants."""
        eye = torch.eye(self.dim, dtype=jac.dtype, device=jac.device)
        sign, logabs = torch.linalg.slogdet(eye + self.dt * jac)
        return logabs, int((sign <= 0).sum())

    def logdet_hutchinson(self, params: Params, x: torch.Tensor, gen: torch.Generator
                          ) -> torch.Tensor:
        """dt·vᵀJv − ½dt²|Jv|² averaged over probes: log det(I + dtJ) up to O(dt³)."""
        probes = torch.randn(x.shape[0], self.dim, self.hutchinson, generator=gen,
                             dtype=x.dtype, device=self.device)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            vel = self.velocity(params, xr)
            total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            count = probes.shape[2]
            for i in range(count):
                probe = probes[:, :, i]
                # J symmetric: ∇(v·probe) = Jᵀprobe = J probe
                jv = torch.autograd.grad((vel * probe).sum(), xr, retain_graph=i + 1 < count)[0]
                total = (total + self.dt * (probe * jv).sum(1)
                         - 0.5 * self.dt ** 2 * (jv * jv).sum(1))
        return total.detach() / count

    def solve_drift(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve y + dt·∇Φ(y) = z row by row (float64): (y, rows not converged).

        Newton from y = z with the exact ∇²Φ, halving a step while it does not
        reduce the residual: y + dt∇Φ(y) is the gradient of the strongly convex
        ½|y|² + dtΦ(y) whenever dt·λ_min(∇²Φ) > −1, so the root is unique and
        the damped iteration reaches it from anywhere (quartic Φ: 5–8 iterations).
        """
        eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
        scale = 1.0 + z.abs().amax(1)
        y = z.clone()
        resid = y + self.dt * self.grad_potential(y) - z
        for _ in range(NEWTON_MAX):
            todo = resid.abs().amax(1) > INVERT_TOL * scale
            if not bool(todo.any()):
                break
            jac = eye + self.dt * self.potential_hessian(y[todo])
            step = torch.linalg.solve(jac, resid[todo].unsqueeze(2)).squeeze(2)
            size = torch.ones(step.shape[0], 1, dtype=z.dtype, device=z.device)
            for _ in range(30):  # backtracking on the residual's norm
                trial = y[todo] - size * step
                new = trial + self.dt * self.grad_potential(trial) - z[todo]
                worse = ~(new.norm(dim=1) < resid[todo].norm(dim=1))
                if not bool(worse.any()):
                    break
                size = torch.where(worse[:, None], 0.5 * size, size)
            y[todo], resid[todo] = trial, new
        return y, resid.abs().amax(1) > 1e3 * INVERT_TOL * scale

    def step(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """One step of the particles (no log-density), in the dtype of ``x``."""
        if self.implicit:  # the score in the training dtype, the drift solve in float64
            z = x - self.dt / self.beta * score_only(params, x)
            return self.solve_drift(z.double())[0].to(x.dtype)
        return x + self.dt * self.velocity(params, x)

    @torch.no_grad()
    def push(self, networks: list[Params], x: torch.Tensor, logp: torch.Tensor,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Push ``x`` through the Euler maps of ``networks`` with the log-density (float64)."""
        folds = 0
        for params in networks:
            if self.implicit:
                y = self.solve_drift(x - self.dt / self.beta * score_only(params, x))[0]
                logdet, bad = self.step_logdet(params, x, y, gen)
                folds += bad
                logp, x = logp - logdet, y
                continue
            if self.exact:
                vel, jac = self.jacobian(params, x)
                logdet, bad = self.logdet_exact(jac)
                folds += bad
            else:
                vel = self.velocity(params, x)
                logdet = self.logdet_hutchinson(params, x, gen)
            logp = logp - logdet
            x = x + self.dt * vel
        return x, logp, folds

    def _map_residual(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """F(x) − y for the map being inverted (explicit: F = x + dt·v; implicit: the
        score half x − (dt/β)s(x), y then being y + dt∇Φ(y))."""
        if self.implicit:
            return x - self.dt / self.beta * score_only(params, x) - y
        return x + self.dt * self.velocity(params, x) - y

    def _map_jacobian(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """∇F at ``x`` for :meth:`_map_residual` (exact path)."""
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        if self.implicit:
            return eye - self.dt / self.beta * score_terms(params, x, hessian=True)[2]
        return eye + self.dt * self.jacobian(params, x)[1]

    @torch.no_grad()
    def _invert_step(self, params: Params, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve F(x) = y for every row of ``y``; (x, rows not converged (bool)).

        Explicit drift: F(x) = x + dt·v(x). Implicit drift: y is first mapped
        to z = y + dt∇Φ(y) (explicit) and F is the score half x − (dt/β)s(x).
        Both paths start from x = y − dt·v(y) (the score half: z + (dt/β)s(z)),
        O(dt²) from the solution.
        Exact path: chord (simplified Newton) iterations with the exact
        Jacobian ∇F at that start, factored once; it contracts at the rate
        dt·‖∇v(x) − ∇v(start)‖ = O(dt³), so 2–3 velocity evaluations reach the
        tolerance, and no Hessian is formed inside the loop (the log-determinant
        needs one at the solution anyway). Rows the chord iterations leave
        unconverged get full Newton steps (Jacobian refreshed every iteration);
        a row still unconverged has, as measured on the double well, no preimage:
        it lies outside the image of the explicit map (module docstring).
        Hutchinson path: fixed-point iterations x ← y − dt·v(x), contracting at
        the rate dt·‖∇v‖ (< 1 where the Euler map is invertible).
        """
        if self.implicit:
            y = y + self.dt * self.grad_potential(y)
            x = y + self.dt / self.beta * score_only(params, y)
        else:
            x = y - self.dt * self.velocity(params, y)
        scale = 1.0 + y.abs().amax(1)
        if self.exact:
            lu, pivots, _ = torch.linalg.lu_factor_ex(self._map_jacobian(params, x))
            for _ in range(NEWTON_MAX):
                resid = self._map_residual(params, x, y)
                if bool((resid.abs().amax(1) <= INVERT_TOL * scale).all()):
                    break
                step = torch.linalg.lu_solve(lu, pivots, resid.unsqueeze(2)).squeeze(2)
                x = x - torch.where(torch.isfinite(step), step, resid)
            return self._newton_polish(params, x, y, scale)
        for _ in range(FIXED_POINT_MAX):
            new = y - self.dt * self.velocity(params, x)
            change = (new - x).abs().amax(1)
            x = new
            if bool((change <= INVERT_TOL * scale).all()):
                break
        resid = self._map_residual(params, x, y)
        return x, ~(resid.abs().amax(1) <= 1e3 * INVERT_TOL * scale)

    def _newton_polish(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                       scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full Newton steps on the rows the chord iterations left unconverged."""
        resid = self._map_residual(params, x, y)
        bad = ~(resid.abs().amax(1) <= INVERT_TOL * scale)
        for _ in range(POLISH_MAX if bool(bad.any()) else 0):
            rows = bad.nonzero().squeeze(1)
            step = torch.linalg.solve_ex(self._map_jacobian(params, x[rows]),
                                         resid[rows].unsqueeze(2))[0].squeeze(2)
            x = x.index_copy(0, rows, x[rows] - torch.where(torch.isfinite(step), step,
                                                            torch.zeros_like(step)))
            resid = self._map_residual(params, x, y)
            bad = ~(resid.abs().amax(1) <= INVERT_TOL * scale)
            if not bool(bad.any()):
                break
        return x, ~(resid.abs().amax(1) <= 1e3 * INVERT_TOL * scale)

    @torch.no_grad()
    def pull_back(self, networks: list[Params], y: torch.Tensor, gen: torch.Generator
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Run the Euler maps backwards from ``y``: (x0, Σ log det, lost rows, folds).

        A row is *lost* once one inversion does not converge (no preimage found):
        its log-density is −∞, the returned law having no mass there.
        """
        logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        lost = torch.zeros(y.shape[0], dtype=torch.bool, device=y.device)
        folds = 0
        x = y.clone()
        for params in reversed(networks):
            rows = (~lost).nonzero().squeeze(1)  # lost rows are not inverted further
            if rows.numel() == 0:
                break
            after = x[rows]
            before, unconverged = self._invert_step(params, after)
            ok = ~unconverged & torch.isfinite(before).all(1)
            step_logdet, fold = self.step_logdet(params, before[ok], after[ok], gen)
            folds += fold
            keep = rows[ok]
            x[keep] = before[ok]
            logdet[keep] = logdet[keep] + step_logdet
            lost[rows[~ok]] = True
        return x, logdet, lost, folds

    def step_logdet(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                    gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """log det of one map's Jacobian at ``x`` (its image ``y``) and the folds there.

        Implicit drift: ∂y/∂x = (I + dt∇²Φ(y))⁻¹(I − (dt/β)∇s(x)), a difference
        of two log-determinants.
        """
        if self.implicit:
            hess_s = score_terms(params, x, hessian=True)[2]
            score_part, fold_s = self.logdet_exact(-hess_s / self.beta)
            drift_part, fold_d = self.logdet_exact(self.potential_hessian(y))
            return score_part - drift_part, fold_s + fold_d
        if self.exact:
            return self.logdet_exact(self.jacobian(params, x)[1])
        return self.logdet_hutchinson(params, x, gen), 0
