"""Score-based transport modelling (Boffi & Vanden-Eijnden 2023): the probability-flow ODE.

The Fokker–Planck solution ρ_t is the law of particles moved by the
probability-flow ODE

    dx/dt = v_t(x) = −∇Φ(x) − β⁻¹ s_t(x),   s_t = ∇log ρ_t,

and SBTM learns s_t on the ODE's *own* particles as it goes: the score of
the particles' law is fitted to those particles at every step, so the flow
is self-consistent (no SDE samples, no reference anywhere).

Algorithm
---------
1. ``setup`` (untimed): draw ``n_particles`` X_0 ~ ρ0 and fit s_0 to the
   known score ∇log ρ0 on them (relative L² loss Σ|s − ∇log ρ0|² / Σ|∇log ρ0|²,
   Adam at ``init_lr``, stopping below 1e-6 or after ``init_steps``). ∇log ρ0 is
   taken by central finite differences of ``task.log_density_initial`` in
   float64 (exact to rounding for Gaussian ρ0, whatever the task).
2. ``run``: forward Euler, K = t/dt steps,

       X_{k+1} = X_k + dt·v_k(X_k),   v_k = −∇Φ − β⁻¹ s_k,

   where s_k (k ≥ 1) is warm-started from s_{k−1} and fitted on the current
   particles X_k: the linear part of the score is re-solved in closed form
   (numerics/score_net.py), then the network takes ``inner_steps`` full-batch
   Adam steps (one optimiser for the whole run, its moments kept) on

   - ``loss="ism"`` (default), implicit score matching E|s|² + 2 div s, the
     divergence exact for D ≤ ``exact_dim`` and otherwise Hutchinson's
     estimator with ``hutchinson`` Gaussian probes redrawn every step, or
   - ``loss="dsm"``, antithetic denoising score matching
     ½Σ_± [σ|s(x ± σξ)|² ± 2 s(x ± σξ)·ξ], ξ ~ N(0, I), σ = ``noise``
     (it learns the score of ρ_t ∗ N(0, σ²I): a bias of O(σ²)),

   and the linear part is re-solved once more for the updated network. The
   parameters of every s_k are stored (one small network per step). With
   ``drift="implicit"`` the step takes ∇Φ at the new point instead
   (y + dt∇Φ(y) = x − (dt/β)s_k(x); "Implicit drift" below).

Score model (s = ∇U, a SiLU MLP plus a quadratic part solved in closed form), its losses
and their measured speed: numerics/score_net.py. The densities of the returned law (the
exact change of variables through the Euler maps): numerics/euler_maps.py.

Implicit drift (``drift="implicit"``): the particle step takes ∇Φ at the new
point and the score at the old one,

    y + dt∇Φ(y) = x − (dt/β)s_k(x),

so F_k = G⁻¹∘H with G(y) = y + dt∇Φ(y), H(x) = x − (dt/β)s_k(x). G is the
gradient of the strongly convex ½|y|² + dtΦ(y) whenever dt·λ_min(∇²Φ) > −1
(−4 for the quartic well: any dt < 1/4), so it is a bijection of R^D whatever
Φ grows like; H is near the identity; the returned law then has a density
everywhere (log det ∂y/∂x = log det(I − (dt/β)∇s_k)(x) − log det(I + dt∇²Φ)(y)).
At the stationary law (s = −β∇Φ) F is exactly the identity, as for the
explicit map. Forward: damped Newton on G (5–8 iterations, ∇²Φ by autograd
where the task has no ``quadratic_potential``); backward: G explicitly, then
H⁻¹ by the chord iterations. Measured on the 2-D double well (recipe below,
t = 0.5): no point without a log-density on the reference draws or on a
[−3, 3]² grid, mass 1.000007 on a 1-D grid, draw/log_density agreement 2e-10,
SymKL 0.115 where the explicit map's is +∞; well masses unchanged (0.4075 /
0.6785 against the explicit 0.402 / 0.6825, reference 0.410 / 0.684). It needs
the exact Jacobians (D ≤ ``exact_dim``; skipped above). The default stays
explicit: on OU (linear drift) the explicit map is onto, and the defaults'
numbers are kept.

Defaults and why (OU, task seeds 100–101, one CPU thread)
----------------------------------------------------------
- ``dt = 1e-2``: the Euler scheme of the probability flow with the *exact*
  score has SymKL 1e-6 / 9e-6 / 3e-5 / 1e-4 at t = 0.9 for D = 1 / 2 / 4 / 12
  (5e-4 at t = 0.5, D = 12), below the statistical error, and it keeps the
  stationary law exactly (v = 0 there). The authors' 1e-3 costs 10× the steps.
- ``n_particles = 2000`` (the paper's scale). It sets the floor: with the
  linear part alone (``inner_steps=0``) SymKL is ≈ D²/(2n), the error of a
  Gaussian fitted to n samples, frozen into the flow because the particle
  set is never redrawn: at t = 0.9, 2e-4 / 1e-3 / 3.6e-3 / 3.8e-2 for D = 1 / 2
  / 4 / 12. 20000 particles bring D = 12 to 6e-3 in 13 s (run) on one thread.
- ``depth = 1``, ``width = 32``, ``lr = 1e-4``, ``inner_steps = 5``: on OU the
  network only adds sampling noise to an exact linear part (ISM on a fixed
  particle set is fitted a little more every step, the overfitting the paper
  warns of), so the defaults move it slowly: at t = 0.9, D = 4, SymKL 5.1e-3
  (floor 3.6e-3), against 9.9e-3 with 10 inner steps, 2.1e-2 with 20, 0.16 at
  lr = 1e-3 × 20 and 3.8e-2 with two layers. Measured with these defaults
  (``metrics.symkl.SYMKL``, seeds 100 / 101, t = 0.5 / 0.9): D = 1: 2.7e-4 / 6.4e-4,
  3.8e-5 / 4.0e-4; D = 2: 6.3e-4 / 1.1e-3, 2.7e-3 / 4.8e-3; D = 4: 2.5e-3 / 5.1e-3,
  3.6e-3 / 6.0e-3; D = 8: 1.1e-2 / 1.6e-2, 1.3e-2 / 1.8e-2; D = 12: 2.8e-2 / 3.8e-2,
  3.8e-2 / 4.9e-2; runs of 0.5–1.5 s (setup 0–2 s), SymKL evaluations 2–11 s.
- ``init_steps = 1500`` at ``init_lr = 5e-3``: a cap; for a Gaussian ρ0 the
  linear part is exact and the network only has to vanish, so the fit of s_0
  reaches the 1e-6 tolerance in 4–60 steps (OU D = 1 / 12, stationary_gmm D = 6).

Recipes
-------
- non-Gaussian laws (the tilted 2-D double well of
  tests/test_generic_potentials.py, β = 2, measured): ``depth=2, lr=1e-3,
  inner_steps=20, drift="implicit"``. The defaults are tuned for OU, where the
  closed-form linear part is the whole score and the network only adds noise;
  on the double well they leave the network untrained (last ISM loss −2.6,
  the best Gaussian score's −2.5, the true optimum −E|∇log ρ_t|² = −18.8 at
  t = 0.5) and the flow keeps mass in the start well (left-well mass 0.841
  against 0.685 at t = 1 from a start in the shallower well). lr = 1e-3 × 20
  steps with one layer overfits the particles instead (ISM −30, below the
  optimum; self-consistency 0.98); two layers reach −19.0 and well masses within
  0.01 of the reference (run 6–9 s for t = 0.5).
- stationary_gmm (not tuned): the defaults do not learn the mixture's score
  fast enough (D = 2, task seed 100, t = 4: SymKL 10); ``lr=1e-3,
  inner_steps=20`` gives 0.31 at D = 2 (the metastability gap of ρ_4 to ρ* is
  0.07; 19 s run), but 17 at D = 6 (gap 0.18), where the samples are good
  (energy 0.11 for draws, 0.20 for the particles, gap 0.17) and the density is
  not: KL(ρ*‖solver) ≈ 15, KL(solver‖ρ*) ≈ 2 (width 128 no better). The
  network overfits the 2000 particles' ISM loss between the modes.

Cost model (n particles, K steps, w width, L depth, D dimension, P probes)
------------------------------------------------------------------------
- training, per step: ``inner_steps`` × O(n·(D·w + (L−1)·w²·D)) for ISM with
  the exact divergence (tangents carry D directions; a one-layer network needs
  none beyond W_1: O(n·w·D)), O(n·(D·w + L·w²)·P) with Hutchinson; the linear
  part O(n·D² + D³) twice; the particle update one score evaluation.
- memory: one network per step, K·(D·w + (L−1)·w² + D²) numbers (~10⁵ at
  K = 100, D = 12), plus the (n, w, D) tangents of a batch.
- draw / log_density of m points, exact path: K steps × O(m·(L·w·D² + D³)) for
  the Hessians and log-determinants (and ∇²Φ: free for OU, D autograd passes
  otherwise); log_density adds one factorisation and 2–3 velocity
  evaluations per step. Hutchinson path: K × O(m·(L·w²+ D·w)·P) and up to
  ``FIXED_POINT_MAX`` velocity evaluations per step backwards.
- what grows: everything linearly with K = t/dt, including every density
  evaluation (the metric's 2 × 8192 points take 2–11 s at K = 90, D ≤ 12);
  training linearly in n; the density path as D² to D³ up to ``exact_dim``.

Generic potentials
------------------
Only ``task.potential_torch`` is needed: ∇Φ is the task's gradient (autograd
by default, tasks/base.py), ∇²Φ the closed form of ``quadratic_potential``
where a task has one (OU: bit-identical numbers) and otherwise D autograd
passes over the task's gradient, which tasks/base.py now builds with
``create_graph`` when its input requires grad (it used to detach it: every
non-quadratic plugin task failed with "element 0 of tensors does not require
grad"); a task whose closed-form gradient is not differentiable gets Φ
differentiated twice instead.

Self-diagnostics (``info["diagnostics"]``, no reference used)
------------------------------------------------------------
``score_matching_loss``: the last step's ISM loss on the particles (its
minimum over all scores is −E|∇log ρ|²; below that the network overfits the
particles); ``score_matching_loss_gaussian``: −tr C⁻¹ of the particles, the
best Gaussian score's ISM loss (a network that learnt nothing non-Gaussian sits
at it); ``self_consistency`` and ``self_consistency_l2`` (exact path): the
residuals of s = ∇log ρ̂ for the law ρ̂ the solver returns
(:meth:`Sbtm.self_consistency`, 2 × 256 log-densities per output time). Measured
(t = 0.5, tilted double well of tests/test_generic_potentials.py unless
stated): OU D = 4 defaults 0.04 (l2 0.002); double well, defaults 1.02 (ISM
−4.1 against the Gaussian −3.9: left-well mass 0.862 vs 0.829), the recipe 0.30
(ISM −19.6; 0.818 / 0.764 vs 0.829 / 0.770), one layer at lr 1e-3 × 20 steps
0.98 (ISM −30: overfitted).

Known gap: the law's outer tails
--------------------------------
The learnt score grows at most linearly (the quadratic part) while a
potential's own score −β∇Φ grows like |x|³ for the double well, so outside the
particles v = −∇Φ − s/β is the bare inward drift and the law's tails are too
thin: with the recipe and the implicit drift, 53 of 8192 reference draws
(0.65 %, the wells' outer 3σ tails) pull back along trajectories that run off
to infinity, their log-density is −∞ and the Monte Carlo SymKL is +∞, though
the well masses are right (40 with 4000 particles, 4 at width 64; the
explicit map loses them the same way). A score written relative to the Gibbs
score, s = −β∇Φ + ∇U, would carry the tails exactly (not done: it changes
the ISM loss by a Laplacian of Φ per evaluation and the OU numbers).

Departures from the paper / the authors' code
---------------------------------------------
The closed-form linear score part; a fixed number ``inner_steps`` of Adam
steps per time step (theirs: blocks of 25 while the gradient norm exceeds a
threshold), so the cost is predictable; the exact ISM divergence by the
closed-form Hessian sweep (theirs: autodiff or Hutchinson); Adam instead of
RAdam/AdaBelief; densities at arbitrary points, which the authors never
evaluate, by the exact discrete change of variables; dt = 1e-2 (theirs 1e-3).

Tasks: no filtering (observations would need particle reweighting). Bayesian
logistic regression is skipped: the explicit Euler maps are invertible only
for dt·λ_max(∇²Φ) < 1, and λ_max is 900–2100 at prior draws (breast_cancer),
so t = 1 needs thousands of steps, each with a network fit, for a density that
contracts by orders of magnitude; minibatch potentials are not wired in.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from numerics.euler_maps import EulerMaps
from numerics.score_net import (
    Adam,
    Params,
    detached,
    dsm_loss,
    finite_difference_score,
    fit_linear_part,
    fused_ism_applies,
    init_network,
    ism_loss,
    ism_value_and_grad,
    mlp_part,
    relative_score_error,
    score_only,
)
from solvers.base import (
    GPU,
    IID_DENSITY,
    LOG_DENSITY,
    SAMPLES,
    Solver,
    SolverResult,
    random_directions,
    require_positive,
    self_consistency_residual,
    steps_to_times,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = ("ism", "dsm")
#: the particle step: x + dt·v (explicit), or ∇Φ taken at the new point (implicit)
DRIFTS = ("explicit", "implicit")
#: rows per chunk in draw / log_density: a (2048, w, D) float64 tangent block is a few MB
CHUNK = 2048
#: the initial fit stops once the relative L² error to ∇log ρ0 is below this
INIT_TOL = 1e-6
#: fresh draws of the self-consistency check at every output time
CHECK_POINTS = 256
#: seed of the probe stream log_density uses in the Hutchinson path (deterministic output)
LOG_DENSITY_PROBE_SEED = 12345


# -------------------------------------------------------------------------- solver
class Sbtm(Solver):
    """SBTM solver (module docstring); after ``run``, ``networks[k]`` is s_k (k < K)."""

    name = "sbtm"
    version = "1"
    parameters = {
        "n_particles": [2000], "dt": [1e-2], "width": [32], "depth": [1], "lr": [1e-4],
        "inner_steps": [5], "init_steps": [1500], "init_lr": [5e-3], "loss": ["ism"],
        "noise": [0.05], "hutchinson": [1], "exact_dim": [16], "quadratic": [True],
        "dtype": ["float32"], "drift": ["explicit"],
    }
    capabilities = frozenset({SAMPLES, LOG_DENSITY, GPU})
    labels = {"n_particles": "N", "inner_steps": "it/step", "width": "w"}
    description = ("score-based transport modelling (Boffi & Vanden-Eijnden 2023): probability "
                   "flow with a score re-fitted on its own particles every step")

    @classmethod
    def validate_params(cls, params):
        """Raise ``ValueError`` for non-positive sizes and rates, unknown loss / dtype."""
        super().validate_params(params)
        require_positive(cls.name, params, "n_particles", "dt", "width", "depth", "lr",
                         "init_lr", "noise", "hutchinson")
        for key in ("n_particles", "width", "depth", "inner_steps", "init_steps", "hutchinson",
                    "exact_dim"):
            value = params[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"solver 'sbtm': {key} must be a non-negative integer, "
                                 f"got {value!r}")
        if params["n_particles"] < 2:
            raise ValueError(f"solver 'sbtm': n_particles must be at least 2, "
                             f"got {params['n_particles']!r}")
        if params["loss"] not in LOSSES:
            raise ValueError(f"solver 'sbtm': loss must be one of {LOSSES}, "
                             f"got {params['loss']!r}")
        if params["drift"] not in DRIFTS:
            raise ValueError(f"solver 'sbtm': drift must be one of {DRIFTS}, "
                             f"got {params['drift']!r}")
        if params["dtype"] not in DTYPES:
            raise ValueError(f"solver 'sbtm': dtype must be one of {sorted(DTYPES)}, "
                             f"got {params['dtype']!r}")
        if not isinstance(params["quadratic"], (bool, np.bool_)):
            raise ValueError("solver 'sbtm': quadratic must be true or false, "
                             f"got {params['quadratic']!r}")
        if params["inner_steps"] == 0 and not params["quadratic"]:  # s_k = s_0: never re-fitted
            raise ValueError("solver 'sbtm': inner_steps=0 needs quadratic=true (the linear "
                             "part is then the only score re-fitted each step)")

    def skip(self, task):
        """Filtering tasks and Bayesian logistic regression are skipped (module docstring)."""
        if getattr(task, "observations", ()):
            return True, ("sbtm does not assimilate observations (the probability flow "
                          "would need particle reweighting)")
        if self.params["drift"] == "implicit" and task.dim > self.params["exact_dim"]:
            return True, (f"drift='implicit' needs exact Jacobians: D = {task.dim} is above "
                          f"exact_dim = {self.params['exact_dim']}")
        if getattr(task, "name", "") == "bayesian_logreg":
            return True, ("the explicit Euler maps need dt·λ_max(∇²Φ) < 1 and λ_max is "
                          "~1e3 at prior draws: thousands of steps with a network fit each "
                          "(not attempted; minibatch potentials not wired in)")
        return False, ""

    # setup -------------------------------------------------------------------------
    def setup(self, task, times, seed, context):
        """Draw the initial particles and fit s_0 to ∇log ρ0 (untimed).

        ``seed`` is spawned into the numpy stream (particles), the network
        initialisation and the device stream of the training noise.
        """
        p = self.params
        self.task, self.times = task, sorted(float(t) for t in times)
        self.dt = float(p["dt"])
        self.steps = steps_to_times(self.times, self.dt)
        self.device, self.dtype = context.device, DTYPES[p["dtype"]]
        self.progress = context.progress
        self.beta = float(task.beta)
        self.dim = int(task.dim)
        self.exact = self.dim <= int(p["exact_dim"])
        self.implicit = p["drift"] == "implicit"
        # a fourth child (the self-consistency check) leaves the first three unchanged
        rng_seed, torch_seed, probe_seed, check_seed = seed.spawn(4)
        self.check_rng = np.random.default_rng(check_seed)
        self.rng = np.random.default_rng(rng_seed)
        gen = torch.Generator().manual_seed(int(torch_seed.generate_state(1)[0]))
        # training noise (probes, DSM) drawn on the device from its own stream
        self.gen = torch.Generator(device=self.device).manual_seed(
            int(probe_seed.generate_state(1)[0]))
        self.x0 = task.sample_initial(int(p["n_particles"]), self.rng)
        # closed-form ∇²Φ for quadratic potentials (OU), else autograd in _potential_hessian
        self.hess_phi = None
        if hasattr(task, "quadratic_potential"):
            self.hess_phi = torch.as_tensor(task.quadratic_potential()[0], dtype=torch.float64,
                                            device=self.device)
        # the Euler maps and their densities (numerics/euler_maps.py)
        self.maps = EulerMaps(self.dt, self.beta, self.dim, self.exact, self.implicit,
                              int(p["hutchinson"]), self._grad_potential,
                              self._potential_hessian, self.device)
        self.params0 = init_network(self.dim, int(p["width"]), int(p["depth"]),
                                    bool(p["quadratic"]), gen, self.dtype, self.device)
        start = time.perf_counter()
        loss, used = self._fit_initial_score()
        self.info: dict[str, Any] = {"init_rel_error": loss, "init_steps_used": used,
                                     "init_seconds": time.perf_counter() - start,
                                     "divergence": "exact" if self.exact else "hutchinson"}

    def _tensor(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``a`` on the solver's device, in ``dtype`` (default: the training dtype)."""
        return torch.as_tensor(np.asarray(a), dtype=dtype or self.dtype, device=self.device)

    def _fit_initial_score(self) -> tuple[float, int]:
        """Fit s_0 to ∇log ρ0 on the initial particles; returns (relative error, steps)."""
        x = self._tensor(self.x0)
        target = self._tensor(finite_difference_score(self.task.log_density_initial, self.x0))
        params = self.params0
        linear = "Q" in params
        optimizer = torch.optim.Adam(list(mlp_part(params).values()),
                                     lr=float(self.params["init_lr"]))
        steps, used = int(self.params["init_steps"]), 0
        for used in range(steps + 1):
            if linear:
                fit_linear_part(params, x, target)
            optimizer.zero_grad(set_to_none=True)
            value = relative_score_error(params, x, target)
            if float(value.detach()) < INIT_TOL or used == steps:
                break
            value.backward()
            optimizer.step()
        with torch.no_grad():
            return float(relative_score_error(params, x, target)), used

    # run ------------------------------------------------------------------------------
    def _grad_potential(self, x: torch.Tensor) -> torch.Tensor:
        """∇Φ at ``x (n, D)`` (the task's exact potential, no data minibatch)."""
        return self.task.grad_potential_torch(x)

    def _probes(self, n: int, count: int, dtype: torch.dtype) -> torch.Tensor:
        """Gaussian probes ``(n, D, count)`` from the training stream."""
        return torch.randn(n, self.dim, count, generator=self.gen, dtype=dtype,
                           device=self.device)

    def _train_loss(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The score-matching loss ``loss`` on ``x``, its noise from the training stream."""
        p = self.params
        if p["loss"] == "dsm":
            xi = torch.randn(x.shape, generator=self.gen, dtype=x.dtype, device=x.device)
            return dsm_loss(params, x, xi, float(p["noise"]))
        probes = None if self.exact else self._probes(x.shape[0], int(p["hutchinson"]), x.dtype)
        return ism_loss(params, x, probes)

    def _train_step(self, params: Params, optimizer: Adam, x: torch.Tensor) -> float:
        """``inner_steps`` full-batch optimiser steps on the particles ``x``; the last loss.

        The defaults' loss (exact ISM, one layer) is evaluated with its
        gradient by :func:`ism_value_and_grad`; other losses go through autograd.
        """
        loss = float("nan")
        fused = (self.params["loss"] == "ism" and self.exact and fused_ism_applies(params))
        trained = optimizer.params
        for _ in range(int(self.params["inner_steps"])):
            if fused:
                value, grads = ism_value_and_grad(params, x)
            else:
                value = self._train_loss(params, x)
                grads = dict(zip(trained, torch.autograd.grad(value, list(trained.values()))))
            optimizer.step(grads)
            loss = float(value.detach())
        return loss

    def run(self):
        """K Euler steps of the particles, the score re-fitted at each (timed).

        Returns one :class:`SolverResult` per evaluation time: the particles as
        ``samples`` and the push-forward law through ``draw`` / ``log_density``.
        """
        p = self.params
        n_steps = self.steps[-1]
        params = self.params0
        linear = "Q" in params
        optimizer = Adam(mlp_part(params), lr=float(p["lr"]))
        x = self._tensor(self.x0)
        self.networks: list[Params] = []
        losses, step_times, results = [], [], {}
        for k in range(n_steps):
            start = time.perf_counter()
            loss = float("nan")
            if k > 0:  # s_0 is the fit to the known initial score
                if linear:  # the particles moved: re-solve the linear part first
                    fit_linear_part(params, x)
                loss = self._train_step(params, optimizer, x)
                if not math.isfinite(loss) and int(p["inner_steps"]) > 0:
                    raise FloatingPointError(f"sbtm step {k}: score-matching loss is {loss}")
                if linear and int(p["inner_steps"]) > 0:
                    fit_linear_part(params, x)
            self.networks.append(detached(params))
            with torch.no_grad():
                x = self.maps.step(self.networks[-1], x)
            if not bool(torch.isfinite(x).all()):
                raise FloatingPointError(f"sbtm step {k}: particles are not finite "
                                         f"(dt={self.dt} too large for the flow?)")
            if k > 0:  # (no NaN placeholder for step 0, which is not trained: JSON rows)
                losses.append(loss)
            step_times.append(time.perf_counter() - start)
            self.progress(k + 1, n_steps, f"SBTM step {k + 1}/{n_steps} loss {loss:.4g}")
            if k + 1 in self.steps:
                t = self.times[self.steps.index(k + 1)]
                results[t] = self._result(k + 1, x, dict(self.info, losses=losses[:],
                                                         step_times=step_times[:]))
        return results

    # densities -------------------------------------------------------------------------
    def _potential_hessian(self, x: torch.Tensor) -> torch.Tensor:
        """∇²Φ at ``x (n, D)`` -> ``(n, D, D)``: closed form if quadratic, else by autograd."""
        if self.hess_phi is not None:
            return self.hess_phi.to(x.dtype).expand(x.shape[0], -1, -1)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            grad = self._grad_potential(xr)
            if grad.grad_fn is None:
                # a closed-form gradient the task wrote outside autograd: differentiate Φ
                # twice instead (the graph of the first derivative kept)
                (grad,) = torch.autograd.grad(self.task.potential_torch(xr).sum(), xr,
                                              create_graph=True)
            rows = [torch.autograd.grad(grad[:, d].sum(), xr, retain_graph=d + 1 < self.dim)[0]
                    for d in range(self.dim)]
        return torch.stack(rows, 1)

    def _result(self, k: int, particles: torch.Tensor, info: dict) -> SolverResult:
        """The law after ``k`` steps: float64 copies of s_0..s_{k−1} behind draw / log_density."""
        networks = [detached(m, torch.float64) for m in self.networks[:k]]
        diagnostics = {"density_folds": 0, "unconverged_inversions": 0}

        def draw(n: int, rng: np.random.Generator):
            """``n`` fresh ρ0 samples pushed through the maps, with their log-density."""
            if n == 0:
                return np.zeros((0, self.dim)), np.zeros(0)
            points = self.task.sample_initial(n, rng)
            gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2 ** 62)))
            xs, logps = [], []
            for start in range(0, n, CHUNK):
                chunk = points[start:start + CHUNK]
                l0 = self._tensor(self.task.log_density_initial(chunk), torch.float64)
                x, logp, folds = self.maps.push(networks, self._tensor(chunk, torch.float64),
                                                l0, gen)
                diagnostics["density_folds"] += folds
                xs.append(x.cpu().numpy())
                logps.append(logp.cpu().numpy())
            return np.concatenate(xs), np.concatenate(logps)

        def log_density(y: np.ndarray) -> np.ndarray:
            """Normalised log-density at ``y (m, D)`` by the backward maps, chunked."""
            y = np.atleast_2d(np.asarray(y, dtype=np.float64))
            gen = torch.Generator(device=self.device).manual_seed(LOG_DENSITY_PROBE_SEED)
            out = []
            for start in range(0, y.shape[0], CHUNK):
                x0, logdet, lost, folds = self.maps.pull_back(
                    networks, self._tensor(y[start:start + CHUNK], torch.float64), gen)
                lost = lost.cpu().numpy()
                diagnostics["unconverged_inversions"] += int(lost.sum())
                diagnostics["density_folds"] += folds
                with np.errstate(over="ignore"):  # a run-off pull-back: log ρ0 = −∞
                    values = (self.task.log_density_initial(x0.cpu().numpy())
                              - logdet.cpu().numpy())
                # no preimage: the returned law has no mass there (not "unknown")
                out.append(np.where(lost, -np.inf, values))
            return np.concatenate(out) if out else np.zeros(0)

        info = dict(info, density_diagnostics=diagnostics,
                    diagnostics=self._self_diagnostics(k, particles, info["losses"]))
        return SolverResult(samples=particles.detach().cpu().double().numpy(),
                            log_density=log_density, draw=draw, info=info, law=IID_DENSITY)

    def _self_diagnostics(self, k: int, particles: torch.Tensor, losses: list[float]
                          ) -> dict[str, float]:
        """Scalars that show a failed fit without a reference (``info["diagnostics"]``).

        ``score_matching_loss``: the last ISM loss on the particles (its minimum
        is −E|∇log ρ|², so it falls with a better fit *and* with overfitting);
        ``score_matching_loss_gaussian``: −tr C⁻¹ of the particles, the ISM loss of
        the best Gaussian score (a network that learnt nothing non-Gaussian sits
        near it); ``self_consistency``: :meth:`self_consistency` (exact path only).
        """
        out: dict[str, float] = {}
        if losses:
            out["score_matching_loss"] = float(losses[-1])
        x = particles.detach().double()
        cov = torch.cov(x.T).reshape(self.dim, self.dim)
        out["score_matching_loss_gaussian"] = -float(torch.linalg.inv(cov).trace())
        if self.exact:
            out.update(self.self_consistency(k))
        return out

    def self_consistency(self, k: int, n: int = CHECK_POINTS) -> dict[str, float]:
        """Relative self-consistency residuals after ``k`` steps (exact path).

        The score s_{k−1} moved the law ρ̂_{k−1} of the first k − 1 maps; the flow
        is self-consistent iff s_{k−1} = ∇log ρ̂_{k−1} there. At ``n`` fresh draws
        of ρ̂_{k−1} and random unit directions e, the residuals
        (:func:`solvers.base.self_consistency_residual`, v = −∇Φ − β⁻¹s) take
        ∂_e log ρ̂ by central differences (step 1e-4) of the solver's own
        float64 log-density (inversions to 1e-12). Costs two log-densities of
        n points; measured values in the module docstring. The recipe's score
        is within 1 % (relative L²) of the true one on the double well, yet its
        residual is 0.3: ∂_e log ρ̂ of the discrete flow is rough (it carries
        the third derivatives of every step's network through the log-dets).
        """
        networks = [detached(m, torch.float64) for m in self.networks[:k - 1]]
        params = detached(self.networks[k - 1], torch.float64)
        x = self._tensor(self.task.sample_initial(n, self.check_rng), torch.float64)
        with torch.no_grad():
            for net in networks:
                x = self.maps.step(net, x)
        e = self._tensor(random_directions(n, self.dim, self.check_rng), torch.float64)
        h = 1e-4

        def log_rho(y: torch.Tensor) -> np.ndarray:
            gen = torch.Generator(device=self.device).manual_seed(LOG_DENSITY_PROBE_SEED)
            x0, logdet, lost, _ = self.maps.pull_back(networks, y, gen)
            with np.errstate(over="ignore", invalid="ignore"):
                values = self.task.log_density_initial(x0.cpu().numpy()) - logdet.cpu().numpy()
            return np.where(lost.cpu().numpy(), np.nan, values)

        score_e = (log_rho(x + h * e) - log_rho(x - h * e)) / (2 * h)
        with torch.no_grad():
            b = -self._grad_potential(x)
            v = b - score_only(params, x) / self.beta
        return self_consistency_residual((v * e).sum(1).cpu().numpy(),
                                         (b * e).sum(1).cpu().numpy(), score_e, self.beta)

    # diagnostics for tests -----------------------------------------------------------
    def learned_velocity(self, k: int, x: np.ndarray) -> np.ndarray:
        """v_k = −∇Φ − β⁻¹ s_k at ``x (n, D)`` with the network of step k (float64, numpy)."""
        params = detached(self.networks[k], torch.float64)
        with torch.no_grad():
            return self.maps.velocity(params, self._tensor(x, torch.float64)).cpu().numpy()

    def pull_back(self, k: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Invert the first ``k`` Euler maps at ``y``: (x0, Σ log det) as numpy (float64)."""
        networks = [detached(m, torch.float64) for m in self.networks[:k]]
        gen = torch.Generator(device=self.device).manual_seed(LOG_DENSITY_PROBE_SEED)
        x0, logdet, _, _ = self.maps.pull_back(networks, self._tensor(y, torch.float64), gen)
        return x0.cpu().numpy(), logdet.cpu().numpy()
