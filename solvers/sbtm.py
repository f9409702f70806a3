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
   (below), then the network takes ``inner_steps`` full-batch Adam steps
   (one optimiser for the whole run, its moments kept) on

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

Score model: s = ∇U with U a scalar MLP with SiLU activations plus, with
``quadratic`` (default), a quadratic,

    h_1 = σ(W_1 x + c_1),  h_l = h_{l−1} + σ(W_l h_{l−1} + c_l) (l = 2..depth),
    U = aᵀh_depth + ½xᵀMx + qᵀx,

so the velocity is a gradient field and its Jacobian is symmetric. M
(symmetric) and q are never touched by the optimiser: given the network part
r, the ISM loss is quadratic in them and its minimiser solves the Lyapunov
equation MC + CM = −(K + Kᵀ) − 2I (C the particles' covariance, K = E[x̃r̃ᵀ];
:func:`fit_linear_part`), so the Gaussian part of the score, the part that
changes fastest on stiff problems, is exact for the current particles at
every step and the network follows only the non-Gaussian rest. Without it
(``quadratic=False``, the authors' model) a stiff OU mode (D = 4, λ_max = 32
on task seed 100) collapses within a few steps faster than a few Adam steps
can follow, and the density blows up (SymKL ~1e14).

s, div s and the Hessian ∇s are computed in closed form in one forward pass
over the layers plus one backward sweep (:func:`score_terms`): with
T_l = ∂z_l/∂x (forward tangents, (n, w, D)), δ_l = ∂U/∂h_l (backward
adjoints) and G_l = δ_l ⊙ σ''(z_l),

    ∇s = Σ_l T_lᵀ diag(G_l) T_l + M,   div s = Σ_l Σ_j G_lj |T_lj|² + tr M,

because the only non-linear operations are the elementwise activations (the
first layer's tangent is W_1 itself, shared by all rows: the exact divergence
of a one-layer network costs O(n·w)). With tangents along random probes
instead of the identity the same sweep gives Hutchinson's vᵀ(∇s)v. All of it
is differentiable in the parameters, so the ISM loss with the exact
divergence costs one forward and one backward pass.

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
  = 2.9 per coordinate of the quartic well below at dt = 1e-2) and its image
  is bounded (|y| ≲ 2.2 after one step, then carried inwards by the flow). On
  the tilted double well of tests/test_generic_potentials.py (1-D factor,
  t = 0.5, the recipe below) the image was [−1.80, 1.64] against reference
  draws up to 1.68: 1 in 10⁴ reference points had no preimage, 1–2 in 10³ in
  2-D, so the Monte Carlo SymKL (8192 reference draws) was NaN before this
  rule and is +∞ with it. ``drift="implicit"`` removes the cause.

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

Speed of the training step (issue #36)
--------------------------------------
Profiled (torch.profiler, one thread, n = 2000, w = 32, D = 2): of 2.6 ms per
optimiser step, 46 % went to ~37 small elementwise products (the sweep of
:func:`score_terms` and its autograd backward) and 0.37 ms to
``torch.optim.Adam``'s per-step bookkeeping for three tensors; the GEMMs with
(n, D) or (w, D)-over-n outputs ran at 60–100 µs where the same products laid
out with n as the output's columns take 10–16 µs. So the defaults' loss (one
layer, exact divergence) has a hand-written forward and backward
(:class:`OneLayerIsm`, :func:`ism_value_and_grad`: feature-major (w, n)
activations, the first three SiLU derivatives from the shared products s' and
z s', the divergence only through its column sums, no autograd graph), and
the solver steps a small :class:`Adam` with the gradients (bit-identical to
``torch.optim.Adam``'s CPU path; tested). Measured, interleaved, one thread,
load 0.7: 1.92 → 0.52 ms per step at D = 2, 2.02 → 0.61 ms at D = 10; runs on
OU (defaults, t = 0.5, task seed 100) 0.96 → 0.51 s at D = 2 and 1.51 → 0.79 s
at D = 12, particles within 1.2e-6 of the previous code (float32 rounding);
two layers (the recipe) keep the autograd sweep and are bit-identical.
Against the authors' JAX code (tests/benchmarks/bench_authors_jax.py: the
same one-layer SiLU potential and 2000 particles, their ``losses.update`` on
``sm_loss`` with RAdam; two worker processes on one core, ten steps a turn,
alternating, medians of each process's CPU time; 2026-12-04, load 0.8):
1.23 / 0.51 ms (2.41×) at D = 2, 1.27 / 0.63 ms (2.01×) at D = 10. The
reductions over n are (D, n) @ (n, w) products (24 against 45 µs at D = 10).

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
from typing import Any, Callable

import numpy as np
import torch

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

Params = dict[str, torch.Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
LOSSES = ("ism", "dsm")
#: the particle step: x + dt·v (explicit), or ∇Φ taken at the new point (implicit)
DRIFTS = ("explicit", "implicit")
#: rows per chunk in draw / log_density: a (2048, w, D) float64 tangent block is a few MB
CHUNK = 2048
#: the initial fit stops once the relative L² error to ∇log ρ0 is below this
INIT_TOL = 1e-6
#: chord-Newton (exact path) and fixed-point (Hutchinson path) inversion: tolerance, caps
INVERT_TOL = 1e-12
NEWTON_MAX = 50
#: full Newton steps on rows the chord iterations leave unconverged: quadratic convergence
#: needs a few where a preimage exists; a point without one would use them all, every step
POLISH_MAX = 12
FIXED_POINT_MAX = 500
#: fresh draws of the self-consistency check at every output time
CHECK_POINTS = 256
#: seed of the probe stream log_density uses in the Hutchinson path (deterministic output)
LOG_DENSITY_PROBE_SEED = 12345


# ------------------------------------------------------------------------ network
def init_network(dim: int, width: int, depth: int, quadratic: bool,
                 generator: torch.Generator, dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> Params:
    """Random parameters of the potential U.

    Parameters
    ----------
    dim, width, depth : int
        Input dimension D, hidden width w and number of hidden layers.
    quadratic : bool
        Add ½xᵀMx + qᵀx (M = sym(Q)); Q and q start at zero, without
        ``requires_grad`` (:func:`fit_linear_part` sets them).
    generator : torch.Generator
        CPU generator (the draws do not depend on the device).
    dtype, device
        Of the returned tensors.

    Returns
    -------
    dict of tensors with ``requires_grad``: ``W0 (w, D)``, ``c0 (w,)``,
    ``W{l}, c{l}`` for l = 1..depth−1 (``(w, w)``, ``(w,)``), ``a (w,)`` and,
    with ``quadratic``, ``Q (D, D)``, ``q (D,)``.
    """
    def randn(*shape: int, scale: float) -> torch.Tensor:
        """float64 normal draws (device- and dtype-independent streams), scaled."""
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    p = {"W0": randn(width, dim, scale=1.0 / math.sqrt(dim)),
         "c0": randn(width, scale=0.5)}
    for layer in range(1, depth):
        # residual branches start small so the initial network is close to one layer
        p[f"W{layer}"] = randn(width, width, scale=0.5 / math.sqrt(width))
        p[f"c{layer}"] = torch.zeros(width, dtype=torch.float64)
    # a small output layer: the network starts as a small correction to the linear part
    p["a"] = randn(width, scale=0.1 / math.sqrt(width))
    params = {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in p.items()}
    if quadratic:
        # solved in closed form (fit_linear_part), never by the optimiser
        params["Q"] = torch.zeros(dim, dim, dtype=dtype, device=device)
        params["q"] = torch.zeros(dim, dtype=dtype, device=device)
    return params


def detached(params: Params, dtype: torch.dtype | None = None) -> Params:
    """A frozen copy of ``params`` (optionally cast)."""
    return {k: v.detach().clone().to(dtype=dtype or v.dtype) for k, v in params.items()}


def depth_of(params: Params) -> int:
    """Number of hidden layers of a parameter dict."""
    return sum(1 for k in params if k.startswith("W"))


def _silu_derivatives(z: torch.Tensor, second: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """SiLU σ(z) = z·sigmoid(z) and its first two derivatives (the second if asked)."""
    sig = torch.sigmoid(z)
    d1 = sig * (1.0 + z * (1.0 - sig))
    d2 = sig * (1.0 - sig) * (2.0 + z * (1.0 - 2.0 * sig)) if second else None
    return z * sig, d1, d2


def score_terms(params: Params, x: torch.Tensor, directions: torch.Tensor | None = None,
                divergence: bool = False, hessian: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """s = ∇U at ``x (n, D)``, with div s and/or ∇s in closed form.

    One forward pass stores the pre-activations z_l and, when asked, the
    tangents T_l = ∂z_l/∂x · V; one backward sweep gives the adjoints
    δ_l = ∂U/∂h_l and s. Then (module docstring) with G_l = δ_l ⊙ σ''(z_l),
    ∇s = Σ_l T_lᵀ diag(G_l) T_l and Σ_p v_pᵀ(∇s)v_p = Σ_l Σ_j G_lj Σ_p T_ljp².

    Parameters
    ----------
    params : dict
        Network parameters (:func:`init_network`).
    x : tensor (n, D)
    directions : tensor (n, D, P) or None
        Tangent directions: None is the identity (exact divergence / Hessian);
        Gaussian probes give Hutchinson's estimate (the sum over probes is
        divided by P here).
    divergence, hessian : bool
        What to return besides s (``hessian`` needs ``directions=None``).

    Returns
    -------
    s (n, D), div s (n,) or None, ∇s (n, D, D) or None. Differentiable in the
    parameters (and in ``x``).
    """
    depth = depth_of(params)
    need_tangents = divergence or hessian
    d1s, d2s = [], []
    z = x @ params["W0"].T + params["c0"]
    act, d1, d2 = _silu_derivatives(z, need_tangents)
    d1s.append(d1), d2s.append(d2)
    h = act
    tangents: list[torch.Tensor] = []
    if need_tangents:
        w0 = params["W0"]
        # T_0 = W0 V: for V = I it is W0 itself, shared by all rows (no (n, w, D) copy)
        t_z = w0.unsqueeze(0) if directions is None else torch.einsum("wd,ndp->nwp", w0,
                                                                        directions)
        tangents.append(t_z)
        t_h = d1.unsqueeze(2) * t_z
    for layer in range(1, depth):
        w, c = params[f"W{layer}"], params[f"c{layer}"]
        z = h @ w.T + c
        act, d1, d2 = _silu_derivatives(z, need_tangents)
        d1s.append(d1), d2s.append(d2)
        h = h + act
        if need_tangents:
            t_z = torch.einsum("vw,nwp->nvp", w, t_h)
            tangents.append(t_z)
            t_h = t_h + d1.unsqueeze(2) * t_z
    # backward sweep: δ_depth = a; through h_l = h_{l−1} + σ(z_l) the adjoint gains
    # W_lᵀ(σ'(z_l) ⊙ δ_l)
    delta = params["a"].expand_as(h)
    curvature = [None] * depth
    for layer in range(depth - 1, 0, -1):
        if need_tangents:
            curvature[layer] = delta * d2s[layer]
        delta = delta + (d1s[layer] * delta) @ params[f"W{layer}"]
    if need_tangents:
        curvature[0] = delta * d2s[0]
    score = (d1s[0] * delta) @ params["W0"]
    quadratic = "Q" in params
    if quadratic:
        sym = 0.5 * (params["Q"] + params["Q"].T)
        score = score + x @ sym + params["q"]
    div = hess = None
    if divergence:
        n_dir = 1 if directions is None else directions.shape[2]
        div = sum(((t * t).sum(2) * g).sum(1) for t, g in zip(tangents, curvature)) / n_dir
        if quadratic:
            div = div + (torch.diagonal(sym).sum() if directions is None else
                         torch.einsum("ndp,de,nep->n", directions, sym, directions) / n_dir)
    if hessian:
        if directions is not None:
            raise ValueError("score_terms: the Hessian needs the identity directions")
        n, dim = x.shape
        hess = 0.0
        for t, g in zip(tangents, curvature):
            if t.shape[0] == 1:
                # first layer, tangent W0 shared by all rows: ONE GEMM with the outer
                # products W0_j W0_jᵀ (an einsum over (n, w, D, D) was 5x slower)
                outer = (t[0].unsqueeze(2) * t[0].unsqueeze(1)).reshape(-1, dim * dim)
                hess = hess + (g @ outer).view(n, dim, dim)
            else:
                hess = hess + torch.bmm((t * g.unsqueeze(2)).transpose(1, 2), t)
        if quadratic:
            hess = hess + sym
    return score, div, hess


def score_only(params: Params, x: torch.Tensor) -> torch.Tensor:
    """s = ∇U at ``x (n, D)`` (no tangents)."""
    return score_terms(params, x)[0]


def mlp_part(params: Params) -> Params:
    """The parameters without the linear score part (Q, q)."""
    return {k: v for k, v in params.items() if k not in ("Q", "q")}


@torch.no_grad()
def fit_linear_part(params: Params, x: torch.Tensor, target: torch.Tensor | None = None,
                    ridge: float = 1e-10) -> None:
    """Set the linear score part Mx + q (M symmetric) to its least-squares optimum, in place.

    With r = the network's score at the particles ``x (n, D)`` (the MLP part,
    held fixed) and centred quantities x̃, r̃, C = E[x̃x̃ᵀ], K = E[x̃ r̃ᵀ]:

    - ISM (``target`` None): min E|r + Mx + q|² + 2 tr M over symmetric M gives
      MC + CM = −(K + Kᵀ) − 2I,
    - L² to a target score g: r̃ → r̃ − g̃ and no −2I,

    and q = −E[r − g] − M E[x]. The ISM form is used whatever ``loss`` trains
    the network (its divergence term, tr M, is exact and free). The Lyapunov
    equation is solved in the eigenbasis of C, M' = R'/(λ_i + λ_j). For r = 0
    and Gaussian particles this is the Gaussian score −C⁻¹(x − m): the part of
    the score that changes fastest on stiff problems is re-solved exactly
    every step, so the optimiser only has to follow the (slower, smaller)
    non-Gaussian rest.
    Computed in float64 (O(n·D² + D³)); ``ridge`` (relative to tr C / D) keeps
    C invertible when particles are degenerate.
    """
    xd = x.double()
    resid = score_only(mlp_part(params), x).double()
    if target is not None:
        resid = resid - target.double()
    n, dim = xd.shape
    x_mean, r_mean = xd.mean(0), resid.mean(0)
    xc, rc = xd - x_mean, resid - r_mean
    cov = xc.T @ xc / n
    cross = xc.T @ rc / n
    rhs = -(cross + cross.T)
    if target is None:
        rhs = rhs - 2.0 * torch.eye(dim, dtype=xd.dtype, device=xd.device)
    eye = torch.eye(dim, dtype=xd.dtype, device=xd.device)
    lam, vec = torch.linalg.eigh(cov + ridge * (torch.trace(cov) / dim + 1e-300) * eye)
    sol = vec @ ((vec.T @ rhs @ vec) / (lam[:, None] + lam[None, :])) @ vec.T
    sol = 0.5 * (sol + sol.T)
    params["Q"].copy_(sol.to(params["Q"].dtype))
    params["q"].copy_((-r_mean - sol @ x_mean).to(params["q"].dtype))


# ---------------------------------------------------------------------------- losses
def ism_loss(params: Params, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """Implicit score matching mean(|s|² + 2 div s) on ``x (n, D)``.

    ``probes (n, D, P)``: Hutchinson's divergence; None: exact. A one-layer
    network with the exact divergence (the defaults) takes the fused
    :class:`OneLayerIsm` (hand-written backward); everything else the
    closed-form sweep of :func:`score_terms` differentiated by autograd.
    """
    if probes is None and fused_ism_applies(params):
        return OneLayerIsm.apply(x, *_one_layer_inputs(params))
    score, div, _ = score_terms(params, x, probes, divergence=True)
    return (score * score).sum(1).mean() + 2.0 * div.mean()


def fused_ism_applies(params: Params) -> bool:
    """One hidden layer, and the linear part (if any) held fixed (not differentiated)."""
    return depth_of(params) == 1 and not any(
        params[k].requires_grad for k in ("Q", "q") if k in params)


def _one_layer_inputs(params: Params) -> tuple[torch.Tensor, ...]:
    """(W0, c0, a, M = sym(Q) or None, q or None) of a one-layer network."""
    sym = q = None
    if "Q" in params:
        sym, q = 0.5 * (params["Q"] + params["Q"].T), params["q"]
    return params["W0"], params["c0"], params["a"], sym, q


def _one_layer_ism_forward(x: torch.Tensor, w0: torch.Tensor, c0: torch.Tensor,
                           a: torch.Tensor, sym: torch.Tensor | None, q: torch.Tensor | None
                           ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The exact ISM loss of a one-layer potential and what its backward needs.

    Points are held feature-major, ``x.T (D, n)`` and activations ``(w, n)``:
    every product then has the long axis n as its output's columns, which
    the CPU GEMM runs 4–7× faster than the (n, D) and (w, D)-over-n layouts
    (measured, one thread, n = 2000, w = 32: 10–16 µs against 63–100 µs).
    σ'(z) = s + z s' and σ''(z) = s'(2 + z(1 − 2s)), s = sigmoid(z), s' = s(1 − s),
    share the products s' and z s'.
    """
    n = x.shape[0]
    xt = x.T.contiguous()                                    # (D, n)
    z = torch.addmm(c0[:, None], w0, xt)                     # (w, n)
    sig = torch.sigmoid(z)
    slope = torch.addcmul(sig, sig, sig, value=-1.0)         # s' = s − s²
    z_slope = z * slope
    d1 = sig + z_slope                                       # σ'(z)
    bend = torch.rsub(sig, 1.0, alpha=2.0)                   # 1 − 2s
    d2 = torch.addcmul(slope, z_slope, bend).add_(slope)     # σ''(z)
    weighted = w0 * a[:, None]                               # (w, D)
    score = weighted.T @ d1                                  # (D, n)
    norms = (w0 * w0).sum(1)
    a_norms = a * norms
    d2_cols = d2.sum(1)
    div_total = d2_cols @ a_norms
    if sym is not None:
        score = score + torch.addmm(q[:, None], sym, xt)
        div_total = div_total + n * torch.diagonal(sym).sum()
    loss = ((score * score).sum() + 2.0 * div_total) / n
    return loss, (xt, w0, a, weighted, z_slope, slope, bend, d1, d2, score, norms, a_norms,
                  d2_cols)


def _one_layer_ism_backward(saved: tuple[torch.Tensor, ...], grad: torch.Tensor | float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(∂L/∂W0, ∂L/∂c0, ∂L/∂a) times ``grad``, from :func:`_one_layer_ism_forward`'s saved state.

    σ'''(z) = 3 s'(1 − 2s) + z s'(1 − 6s') (using (1 − 2s)² = 1 − 4s'), formed as
    z s' − 6 s'(z s' − (1 − 2s)/2): two passes over (w, n).
    """
    xt, w0, a, weighted, z_slope, slope, bend, d1, d2, score, norms, a_norms, d2_cols = saved
    scale = 2.0 * grad / xt.shape[1]
    s_bar = score * scale                                    # ∂L/∂s (D, n)
    # the reductions over n as (D, n) @ (n, w) products: 2x faster at D = 10 than
    # (w, n) @ (n, D) (measured 24 against 45 µs, n = 2000, w = 32)
    p_mat = (s_bar @ d1.T).T                                 # (w, D)
    k = scale * d2_cols                                      # (w,)
    grad_a = (p_mat * w0).sum(1) + k * norms
    g = (weighted @ s_bar).mul_(d2)                          # (w, n)
    third = torch.addcmul(z_slope, slope, torch.sub(z_slope, bend, alpha=0.5), value=-6.0)
    g.addcmul_(third, (scale * a_norms)[:, None])
    grad_w = torch.addmm((a[:, None] * p_mat + (2.0 * a * k)[:, None] * w0).T, xt, g.T).T
    return grad_w, g.sum(1), grad_a


class OneLayerIsm(torch.autograd.Function):
    """The exact ISM loss of a one-layer potential, forward and backward by hand.

    U = aᵀσ(Wx + c) + ½xᵀMx + qᵀx (σ = SiLU, M symmetric, M and q fixed) has
    s = Wᵀ(a ⊙ σ'(z)) + Mx + q and div s = Σ_j a_j σ''(z_j)|W_j|² + tr M with
    z = Wx + c. Over n points, with S = 2s/n, P = Σ_i σ'(z_i) S_iᵀ (w, D) and
    k_j = (2/n) Σ_i σ''(z_ij), the loss L = mean|s|² + 2 mean div s has

        ∂L/∂a_j = P_j·W_j + k_j|W_j|²,
        ∂L/∂W_j = a_j P_j + 2 a_j k_j W_j + Σ_i G_ij x_i,   ∂L/∂c_j = Σ_i G_ij,
        G_ij = a_j (W_j·S_i) σ''(z_ij) + (2/n) a_j |W_j|² σ'''(z_ij).

    The divergence enters only through its column sums, so no per-point
    divergence is formed, and no autograd graph is recorded (the module
    docstring has the measurements). ``x``, M and q get no gradient.
    """

    @staticmethod
    def forward(ctx, x, w0, c0, a, sym, q):  # noqa: D102 (the class docstring)
        loss, saved = _one_layer_ism_forward(x, w0, c0, a, sym, q)
        ctx.save_for_backward(*saved)
        return loss

    @staticmethod
    def backward(ctx, grad):  # noqa: D102 (the class docstring)
        grad_w, grad_c, grad_a = _one_layer_ism_backward(ctx.saved_tensors, grad)
        return None, grad_w, grad_c, grad_a, None, None


@torch.no_grad()
def ism_value_and_grad(params: Params, x: torch.Tensor) -> tuple[torch.Tensor, Params]:
    """The exact ISM loss and its gradients in W0, c0, a, without autograd.

    For :func:`fused_ism_applies` networks: the training step's loss and
    gradient in one forward and one backward sweep of plain tensor
    operations (no graph, no gradient accumulation, no ``zero_grad``).
    """
    loss, saved = _one_layer_ism_forward(x, *_one_layer_inputs(params))
    grad_w, grad_c, grad_a = _one_layer_ism_backward(saved, 1.0)
    return loss, {"W0": grad_w, "c0": grad_c, "a": grad_a}


class Adam:
    """Adam on a fixed dict of tensors, stepped with gradients handed to it.

    The update is ``torch.optim.Adam``'s single-tensor path (its CPU default)
    operation for operation, each done for all tensors at once by the
    ``torch._foreach_*`` kernels, so its numbers are bit-identical to it
    (tested); it skips that class's per-step bookkeeping (≈ 0.37 ms per step for
    three tensors on one thread, as much as the one-layer loss and gradient).
    """

    def __init__(self, params: Params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.params = params
        self.lr, self.betas, self.eps = float(lr), betas, float(eps)
        self.steps = 0
        self.exp_avg = [torch.zeros_like(v) for v in params.values()]
        self.exp_avg_sq = [torch.zeros_like(v) for v in params.values()]

    @torch.no_grad()
    def step(self, grads: Params) -> None:
        """One update of every parameter from ``grads`` (same keys)."""
        beta1, beta2 = self.betas
        self.steps += 1
        step = float(self.steps)
        step_size = self.lr / (1 - beta1 ** step)
        correction2_sqrt = (1 - beta2 ** step) ** 0.5
        grad_list = [grads[key] for key in self.params]
        torch._foreach_lerp_(self.exp_avg, grad_list, 1 - beta1)
        torch._foreach_mul_(self.exp_avg_sq, beta2)
        torch._foreach_addcmul_(self.exp_avg_sq, grad_list, grad_list, value=1 - beta2)
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(list(self.params.values()), self.exp_avg, denom,
                                value=-step_size)


def dsm_loss(params: Params, x: torch.Tensor, xi: torch.Tensor, sigma: float) -> torch.Tensor:
    """Antithetic denoising score matching ½Σ_± [σ|s(x ± σξ)|² ± 2 s(x ± σξ)·ξ] (mean).

    σ|s(x+σξ) + ξ/σ|² expanded, constant dropped; the ± pair cancels the
    O(1/σ) variance of the cross term to first order.
    """
    total = 0.0
    for sign in (1.0, -1.0):
        s = score_only(params, x + sign * sigma * xi)
        total = total + sigma * (s * s).sum(1) + 2.0 * sign * (s * xi).sum(1)
    return 0.5 * total.mean()


def relative_score_error(params: Params, x: torch.Tensor, target: torch.Tensor
                         ) -> torch.Tensor:
    """Σ|s(x) − target|² / Σ|target|² (the initial fit's loss)."""
    diff = score_only(params, x) - target
    return (diff * diff).sum() / (target * target).sum().clamp_min(1e-300)


def finite_difference_score(log_density: Callable[[np.ndarray], np.ndarray], x: np.ndarray
                            ) -> np.ndarray:
    """∇log ρ0 at ``x (n, D)`` by central differences of a numpy log-density (float64).

    Step 1e-5·max(1, |x_d|): the truncation error is O(h²·∂³log ρ) (zero for a
    Gaussian) and the rounding error ~1e-16·|log ρ|/h ≈ 1e-10.
    """
    x = np.asarray(x, dtype=np.float64)
    grad = np.empty_like(x)
    for d in range(x.shape[1]):
        h = 1e-5 * np.maximum(1.0, np.abs(x[:, d]))
        up, down = x.copy(), x.copy()
        up[:, d] += h
        down[:, d] -= h
        grad[:, d] = (log_density(up) - log_density(down)) / (2.0 * h)
    return grad


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

    def _velocity(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """v = −∇Φ − β⁻¹ s at ``x (n, D)``."""
        return -self._grad_potential(x) - score_only(params, x) / self.beta

    def _probes(self, n: int, count: int, dtype: torch.dtype,
                gen: torch.Generator | None = None) -> torch.Tensor:
        """Gaussian probes ``(n, D, count)`` from the training stream (or ``gen``)."""
        return torch.randn(n, self.dim, count, generator=gen or self.gen, dtype=dtype,
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
                x = self._step(self.networks[-1], x)
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

    def _jacobian(self, params: Params, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v, ∇v) at ``x (n, D)``: ``(n, D)``, ``(n, D, D)`` (exact path)."""
        score, _, hess = score_terms(params, x, hessian=True)
        vel = -self._grad_potential(x) - score / self.beta
        return vel, -self._potential_hessian(x) - hess / self.beta

    def _logdet_exact(self, jac: torch.Tensor) -> tuple[torch.Tensor, int]:
        """log |det(I + dt·jac)| ``(n,)`` and the number of non-positive determinants."""
        eye = torch.eye(self.dim, dtype=jac.dtype, device=jac.device)
        sign, logabs = torch.linalg.slogdet(eye + self.dt * jac)
        return logabs, int((sign <= 0).sum())

    def _logdet_hutchinson(self, params: Params, x: torch.Tensor, gen: torch.Generator
                           ) -> torch.Tensor:
        """dt·vᵀJv − ½dt²|Jv|² averaged over probes: log det(I + dtJ) up to O(dt³)."""
        probes = self._probes(x.shape[0], int(self.params["hutchinson"]), x.dtype, gen)
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            vel = self._velocity(params, xr)
            total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            count = probes.shape[2]
            for i in range(count):
                probe = probes[:, :, i]
                # J symmetric: ∇(v·probe) = Jᵀprobe = J probe
                jv = torch.autograd.grad((vel * probe).sum(), xr, retain_graph=i + 1 < count)[0]
                total = (total + self.dt * (probe * jv).sum(1)
                         - 0.5 * self.dt ** 2 * (jv * jv).sum(1))
        return total.detach() / count

    def _solve_drift(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Solve y + dt·∇Φ(y) = z row by row (float64): (y, rows not converged).

        Newton from y = z with the exact ∇²Φ, halving a step while it does not
        reduce the residual: y + dt∇Φ(y) is the gradient of the strongly convex
        ½|y|² + dtΦ(y) whenever dt·λ_min(∇²Φ) > −1, so the root is unique and
        the damped iteration reaches it from anywhere (quartic Φ: 5–8 iterations).
        """
        eye = torch.eye(self.dim, dtype=z.dtype, device=z.device)
        scale = 1.0 + z.abs().amax(1)
        y = z.clone()
        resid = y + self.dt * self._grad_potential(y) - z
        for _ in range(NEWTON_MAX):
            todo = resid.abs().amax(1) > INVERT_TOL * scale
            if not bool(todo.any()):
                break
            jac = eye + self.dt * self._potential_hessian(y[todo])
            step = torch.linalg.solve(jac, resid[todo].unsqueeze(2)).squeeze(2)
            size = torch.ones(step.shape[0], 1, dtype=z.dtype, device=z.device)
            for _ in range(30):  # backtracking on the residual's norm
                trial = y[todo] - size * step
                new = trial + self.dt * self._grad_potential(trial) - z[todo]
                worse = ~(new.norm(dim=1) < resid[todo].norm(dim=1))
                if not bool(worse.any()):
                    break
                size = torch.where(worse[:, None], 0.5 * size, size)
            y[todo], resid[todo] = trial, new
        return y, resid.abs().amax(1) > 1e3 * INVERT_TOL * scale

    def _step(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """One step of the particles (no log-density), in the dtype of ``x``."""
        if self.implicit:  # the score in the training dtype, the drift solve in float64
            z = x - self.dt / self.beta * score_only(params, x)
            return self._solve_drift(z.double())[0].to(x.dtype)
        return x + self.dt * self._velocity(params, x)

    @torch.no_grad()
    def _push(self, networks: list[Params], x: torch.Tensor, logp: torch.Tensor,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Push ``x`` through the Euler maps of ``networks`` with the log-density (float64)."""
        folds = 0
        for params in networks:
            if self.implicit:
                y = self._solve_drift(x - self.dt / self.beta * score_only(params, x))[0]
                logdet, bad = self._step_logdet(params, x, y, gen)
                folds += bad
                logp, x = logp - logdet, y
                continue
            if self.exact:
                vel, jac = self._jacobian(params, x)
                logdet, bad = self._logdet_exact(jac)
                folds += bad
            else:
                vel = self._velocity(params, x)
                logdet = self._logdet_hutchinson(params, x, gen)
            logp = logp - logdet
            x = x + self.dt * vel
        return x, logp, folds

    def _map_residual(self, params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """F(x) − y for the map being inverted (explicit: F = x + dt·v; implicit: the
        score half x − (dt/β)s(x), y then being y + dt∇Φ(y))."""
        if self.implicit:
            return x - self.dt / self.beta * score_only(params, x) - y
        return x + self.dt * self._velocity(params, x) - y

    def _map_jacobian(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """∇F at ``x`` for :meth:`_map_residual` (exact path)."""
        eye = torch.eye(self.dim, dtype=x.dtype, device=x.device)
        if self.implicit:
            return eye - self.dt / self.beta * score_terms(params, x, hessian=True)[2]
        return eye + self.dt * self._jacobian(params, x)[1]

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
            y = y + self.dt * self._grad_potential(y)
            x = y + self.dt / self.beta * score_only(params, y)
        else:
            x = y - self.dt * self._velocity(params, y)
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
            new = y - self.dt * self._velocity(params, x)
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
    def _pull_back(self, networks: list[Params], y: torch.Tensor, gen: torch.Generator
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
            step_logdet, fold = self._step_logdet(params, before[ok], after[ok], gen)
            folds += fold
            keep = rows[ok]
            x[keep] = before[ok]
            logdet[keep] = logdet[keep] + step_logdet
            lost[rows[~ok]] = True
        return x, logdet, lost, folds

    def _step_logdet(self, params: Params, x: torch.Tensor, y: torch.Tensor,
                     gen: torch.Generator) -> tuple[torch.Tensor, int]:
        """log det of one map's Jacobian at ``x`` (its image ``y``) and the folds there.

        Implicit drift: ∂y/∂x = (I + dt∇²Φ(y))⁻¹(I − (dt/β)∇s(x)), a difference
        of two log-determinants.
        """
        if self.implicit:
            hess_s = score_terms(params, x, hessian=True)[2]
            score_part, fold_s = self._logdet_exact(-hess_s / self.beta)
            drift_part, fold_d = self._logdet_exact(self._potential_hessian(y))
            return score_part - drift_part, fold_s + fold_d
        if self.exact:
            return self._logdet_exact(self._jacobian(params, x)[1])
        return self._logdet_hutchinson(params, x, gen), 0

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
                x, logp, folds = self._push(networks, self._tensor(chunk, torch.float64), l0, gen)
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
                x0, logdet, lost, folds = self._pull_back(
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
                x = self._step(net, x)
        e = self._tensor(random_directions(n, self.dim, self.check_rng), torch.float64)
        h = 1e-4

        def log_rho(y: torch.Tensor) -> np.ndarray:
            gen = torch.Generator(device=self.device).manual_seed(LOG_DENSITY_PROBE_SEED)
            x0, logdet, lost, _ = self._pull_back(networks, y, gen)
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
            return self._velocity(params, self._tensor(x, torch.float64)).cpu().numpy()

    def pull_back(self, k: int, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Invert the first ``k`` Euler maps at ``y``: (x0, Σ log det) as numpy (float64)."""
        networks = [detached(m, torch.float64) for m in self.networks[:k]]
        gen = torch.Generator(device=self.device).manual_seed(LOG_DENSITY_PROBE_SEED)
        x0, logdet, _, _ = self._pull_back(networks, self._tensor(y, torch.float64), gen)
        return x0.cpu().numpy(), logdet.cpu().numpy()
