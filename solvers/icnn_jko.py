"""JKO scheme with input-convex neural networks (Mokrov et al., NeurIPS 2021).

Each JKO step of size h learns a convex potential ψ_k (a DenseICNN) and sets
ρ^(k) = ∇ψ_k # ρ^(k−1), minimising over the network parameters

    L(ψ) = ½E‖∇ψ(X) − X‖² + h·(E Φ(∇ψ(X)) − β⁻¹ E log det ∇²ψ(X)),  X ~ ρ^(k−1),

which is h times the JKO objective (same minimiser; it is the scaling the
original code used). Φ is estimated on a data minibatch for tasks whose
``data_batch`` returns one (posteriors).

Network (DenseICNN, two hidden layers of width w, rank-r quadratic blocks)::

    z1 = Σ_r (xᵀQ1_r)² + W1 x + b1                 (no activation, convex)
    u  = Z z1 + Σ_r (xᵀQ2_r)² + W2 x + b2,  z2 = softplus(u)
    ψ  = cᵀ z2 + ½ε‖x‖²

with Z ≥ 0 and c ≥ 0 kept non-negative by *clamping* after every optimiser
step (as the original). Every pre-activation is a quadratic,
u_j = ½xᵀK_j x + B_jᵀx + a_j with K_j = 2(Σ_i Z_ji Σ_r Q1_ri Q1_riᵀ + Σ_r Q2_rj Q2_rjᵀ) ⪰ 0, so

    ∇u_j = K_j x + B_j                          (all units: ONE GEMM),
    ∇ψ   = Σ_j c_j σ(u_j) ∇u_j + εx,
    ∇²ψ  = Σ_j c_j σ'(u_j) ∇u_j∇u_jᵀ + Σ_j c_j σ(u_j) K_j + εI      (PSD by construction),

computed for a whole batch in a few GEMMs plus one batched product; log det
through a batched Cholesky with a jitter fallback for numerically non-PD
matrices, its gradient supplied as H⁻¹ from the same factor.

Sampling of ρ^(k−1) during training: by default a *pool* of samples drawn
once from ρ0 is pushed through each new map after its step, so a step's cost
does not depend on k (the original pushes fresh ρ0 batches through all earlier
maps every iteration, O(K²) in total: ``fresh_samples=True``). Each step walks
through a random permutation of the pool. ``pool_size=0`` (default) makes the
pool iters × batch_size, so no sample is seen twice within a step: a small
pool that is reused overfits the empirical objective (measured on OU D=2,
t=0.9: SymKL 0.0069 with a 16k pool, 0.0033 with 64k, 0.0012 with fresh samples).

Densities: ``draw`` pushes fresh ρ0 samples through all maps with
log ρ^(k)(∇ψ(x)) = log ρ^(k−1)(x) − log det ∇²ψ(x); ``log_density`` at arbitrary
points inverts each map by batched damped Newton on ψ(x) − ⟨x, y⟩ (exact
Hessian, Armijo backtracking), in float64.

Filtering tasks (``task.observations``): JKO through each inter-observation
interval; after each observation the pool is replaced by samples of the
filtering law from independence Metropolis–Hastings (proposals: ρ0 pushed
through all learned maps; acceptance: ratio of the products of observation
likelihoods along the two trajectories, the Jacobians cancel; ``mh_warmup``,
``mh_thin``, ``batch_size`` chains, at most 2^16 samples). The proposals
are kept from one observation to the next and pushed on through the new
block's maps only (O(K) map evaluations over the run instead of the O(K²) of
fresh proposals each round; rounds share proposals, each round is still an
exact MH). The density at
time t is log ρ0(x0) − Σ log det ∇²ψ_k + Σ_τ log L_τ(x_τ) − log Z along the
pulled-back trajectory of each point. Z: for 1-D tasks by the trapezoid rule
on the solver's own grid (4001 points over the MH samples ± 5 std), otherwise
Z = E_ρ0[Π L] by Monte Carlo over 2^17 pushed draws. At each evaluation time
one MH run of ``n_samples`` + 8192 samples gives the result's samples and the
draws (subsets, with their log-densities) the metrics ask for. Filtering
needs the pool (no ``fresh_samples``).

Recipes (hyperparameters of the original study)
-----------------------------------------------
- OU (defaults): h=0.05, width=64, iters=500, batch_size=1024, lr=5e-3
  (``iters_warm`` sets a different count for the warm-started steps k ≥ 2).
  Within each step the rate decays by a cosine to ``lr_final`` × lr (0.1 by
  default; 1.0 = the original constant rate): on OU D=12 (seed 0) SymKL at
  t=0.5 / 0.9 went from 0.035 / 0.015 (constant) to 0.015 / 0.0072.
  500 iterations do not converge a step: on OU D=3 (seeds 100–103, outside the
  benchmark's seeds) median SymKL at t=0.9 was 0.0060 / 0.0026 / 0.0014 with
  iters 500 / 1000 / 2000 on every step, while 4× larger batches (0.0052), a
  lower final rate (lr_final 0.01: 0.0057) or 2000 iterations on the first step
  only (0.0044) helped little; the exact JKO floor at h=0.05 there is 0.0008
  (``gaussian_jko``). The standard profile therefore runs OU with iters=1000
  (the default stays the original 500). The same recipe holds at scale, with no
  change of width or iterations (``large`` profile, seeds 0–2): median SymKL at
  t=0.9 0.0086 / 0.019 / 0.040 at D=16 / 32 / 64 against the
  exact JKO floor's 0.0033 / 0.0058 / 0.018, in 3.9 / 11.9 / 40–48 min a run on one
  thread at a peak RSS of 0.66 / 0.93 / 1.5 GB.
- Stationary Gaussian mixture: h=0.1 (40 steps to t=4), batch_size=512,
  width 256/384/512/512/512/1024 for D=2/4/6/8/10/12, iters 500/700/700/1000/1000/1200,
  lr=5e-3, lr_late=2e-3, lr_switch_step=20 (the study, on a GPU). On this CPU the
  standard profile runs width 256 at every D with iters 500/700/700/1000/1000/1000
  (the ``study`` profile: width 128 at D = 2; 1400 it/step at D = 6, 2000 at D = 8, 10, 12).
  Tuning study on task seed 100 (outside the benchmark's seeds), SymKL to ρ* at t = 4,
  whose floor — the distance of the exact ρ_4 to ρ*, from the task's stationarity
  estimate — is 0.028 / 0.158 / 0.242 at D = 2 / 6 / 12:
  D = 2: w 256 × 500 it 0.070, w 256 × 1000 it 0.074, w 512 × 500 it 0.097;
  D = 6: w 256 × 700 it 0.29 (study median 0.342), w 256 × 1400 it 0.241 (397 s; the
  error above the floor falls by 37 %);
  D = 12: w 256 × 1000 it 0.73, w 512 × 1000 it 0.77 (batch 512), 0.92 (batch 256)
  (study median 0.489). More width does not help at these iteration counts and a
  smaller batch hurts; w = 512 costs twice the time (D = 12: 21 min against ~11 min a
  run on one idle thread). More iterations do help at D ≥ 10 (same seed 100, w 256,
  one thread each): D = 10, floor 0.063: 1000 it 0.348 (524 s), 2000 it 0.272
  (1012 s); D = 12, floor 0.242: 2000 it 0.589 (1306 s) against 0.73 at 1000 it — the
  error above the floor falls by 27 % and 29 %, within the 30-minute budget of a run.
  The ``study`` profile runs 2000 it/step at D = 10 and 12. Beyond that the gain stops
  (seed 100, D = 10, Monte Carlo SE 0.011): 3000 it reads 0.265 (1475 s) against 0.272,
  and width 128, which helps at D = 2, reads 0.326 (583 s).
  Comparing with the study needs its own targets: how far ρ_4 still is from ρ* varies
  by instance (``stationary_gmm`` task seeds 0–2 at D = 10: SymKL 0.06–0.35), and the
  task ``stationary_gmm_study`` rebuilds the study's five per D. There (medians of its
  five targets, one thread a run; mean per-target difference to the study's stored run
  ± its standard error over the five): D = 2, 500 it, solver seed 0: 0.064 against the study's 0.056
  (+0.006 ± 0.001, above on each target by 1.04–1.35×; 83 s a run); D = 4, 700 it:
  0.137 against 0.145 (+0.006 ± 0.007; 2.7 min); D = 6, 700 it: 0.358 against 0.342
  (+0.027 ± 0.009; 3.8 min); D = 8, 1000 it: 0.422 against 0.406 (+0.018 ± 0.009;
  6.6 min); D = 10, 2000 it: 0.303 against 0.297 (−0.012 ± 0.015, ratios 0.86–1.11
  run by run; 16 min a run), and over five solver seeds a target again 0.303 (25 runs;
  95 % bootstrap interval, seeds resampled within targets: 0.297–0.310; −0.017 ±
  0.013 on the targets' seed means, below on 4 of 5, the study's run beaten in 18 of
  25 runs); D = 12, 2000 it: 0.473 against 0.489 (−0.058 ± 0.025, below on 4 of 5;
  19 min a run, peak RSS 0.51 GB). The study's own width at D = 6
  (512, 700 it) does not close the gap: 0.373 (+0.047 ± 0.013), twice the time;
  iterations did at D = 10 and 12, and at D = 6: 1400 it reads 0.314 against 0.342
  (−0.010 ± 0.010, below on 3 of 5; 6.6 min a run), and at D = 8: 2000 it reads 0.378
  against 0.406 (−0.045 ± 0.010, below on 5 of 5; 10.5 min a run). The D = 2 gap is not the
  optimiser's: on its run 3 (study 0.056, floor 0.039) the recipe reads 0.064 and so do
  a constant rate within each step (0.064), 4000 pre-training iterations (0.064), 1000
  it/step (0.065) and the original's fresh ρ0 samples pushed through every map (0.066,
  3× the time); nor is it the time step's: h = 0.05 (80 steps, same recipe) reads 0.072
  on task seed 100 against 0.070 at h = 0.1 (floor 0.028), nor the density estimate's:
  the study's inversion (float32 gradient descent, tolerance 1e-5) and ours (Newton,
  1e-10) give the same KL(ρ*‖fitted) on one trained model to 1e-5. Nor is it one
  solver seed's draw: with five solver seeds per target (the ``study`` profile) width
  256 reads 0.057 (median of the 25 runs) and stays above the study's run on every
  target (mean per-target difference +0.005 ± 0.001; the study below 21 of our 25 runs).
  A narrower network closes it: on a mixture instance outside the benchmark's (``stationary_gmm``
  built from SeedSequence(100), solver seeds 1–3, SymKL to ρ* at t = 4) width 256 reads
  0.109 (0.106–0.112), 128 reads 0.102 (0.101–0.105) in 60 % of the time, 64 reads 0.103
  (0.102–0.105), 128 at 1000 it/step 0.101 and batch 1024 0.107; on the study's targets
  width 128 (five seeds each) reads 0.054 against the study's 0.056 (mean per-target
  difference +0.001 ± 0.001, the study below 16 of our 25 runs; 42 s a run).
- Bayesian logistic regression: h=0.1, width 128–512, 2–16 steps, iters 2000–10000,
  lr 2e-5..2e-3 per data set, data_batch_size ≈ 512.
- Filtering 1-D: h=0.1, width=256, iters=700, batch_size=1024, lr=4e-3.

Departures from the original: pool sampling by default (see above); the
within-step cosine decay of the learning rate; Newton
inversion instead of gradient descent; identity pre-training on a mixture of
ρ0 and a 2× wider ρ0 (so the first map is close to the identity in the tails
too); a new Adam optimiser per step, no weight decay.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch

from solvers.base import (FILTERING, GPU, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver,
                          SolverResult, require_positive, steps_to_times)

Params = dict[str, torch.Tensor]
#: names of the parameters kept non-negative (convexity)
NONNEG = ("Z", "c")
#: rows per chunk when pushing / inverting many points: a (1024, D, w) float64 block of
#: ∇u stays in cache at the sizes that matter (measured 1.5-2x faster than 4096 rows)
CHUNK = 1024
#: filtering: at most this many MH samples of the filtering law start a block
MH_POOL = 2 ** 16
#: filtering: MH samples kept at an evaluation time for the metrics' draws (beyond n_samples)
FILTER_DRAWS = 2 ** 13

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- network
def init_icnn(dim: int, width: int, rank: int, generator: torch.Generator,
              dtype: torch.dtype = torch.float32, device: str = "cpu") -> Params:
    """Random DenseICNN parameters.

    Shapes: ``Q1, Q2 (dim, rank*width)`` (column ``r*width + j`` is Q_rj),
    ``W1, W2 (width, dim)``, ``b1, b2 (width,)``, ``Z (width, width)``, ``c (width,)``.
    """
    def randn(*shape: int, scale: float) -> torch.Tensor:
        return scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    p = {"Q1": randn(dim, rank * width, scale=1.0 / math.sqrt(dim * rank)),
         "W1": randn(width, dim, scale=1.0 / math.sqrt(dim)),
         "b1": torch.zeros(width, dtype=torch.float64),
         "Q2": randn(dim, rank * width, scale=1.0 / math.sqrt(dim * rank)),
         "W2": randn(width, dim, scale=1.0 / math.sqrt(dim)),
         "b2": torch.zeros(width, dtype=torch.float64),
         "Z": randn(width, width, scale=1.0 / width).abs(),
         "c": randn(width, scale=1.0 / width).abs()}
    return {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in p.items()}


def clamp_nonnegative_(params: Params) -> None:
    """Project Z and c onto the non-negative orthant (keeps ψ convex)."""
    with torch.no_grad():
        for key in NONNEG:
            params[key].clamp_(min=0.0)


def _hidden(params: Params, x: torch.Tensor):
    """Pre-activations: ``a1, a2 (n, r, w)`` and ``u (n, w)``."""
    n, width = x.shape[0], params["b1"].shape[0]
    a1 = (x @ params["Q1"]).view(n, -1, width)
    z1 = (a1 * a1).sum(1) + x @ params["W1"].T + params["b1"]
    a2 = (x @ params["Q2"]).view(n, -1, width)
    u = z1 @ params["Z"].T + (a2 * a2).sum(1) + x @ params["W2"].T + params["b2"]
    return a1, a2, u


def icnn_potential(params: Params, x: torch.Tensor, eps: float) -> torch.Tensor:
    """ψ(x) for ``x (n, D)`` -> ``(n,)``."""
    _, _, u = _hidden(params, x)
    return torch.nn.functional.softplus(u) @ params["c"] + 0.5 * eps * (x * x).sum(1)


def symmetric_packing(dim: int, device: torch.device | str = "cpu"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index maps between a symmetric ``(D, D)`` matrix and its P = D(D+1)/2 packed entries.

    Returns ``rows, cols (P,)`` (the upper triangle d <= e, row by row) and
    ``full (D*D,)``, the packed position of each entry (d, e) of the full matrix.
    """
    rows, cols = torch.triu_indices(dim, dim, device=device)
    pos = torch.empty(dim, dim, dtype=torch.long, device=device)
    packed = torch.arange(rows.shape[0], device=device)
    pos[rows, cols] = packed
    pos[cols, rows] = packed
    return rows, cols, pos.reshape(-1)


def packed_quadratic_form(params: Params
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pre-activation is quadratic in x: u_j(x) = ½xᵀK_j x + B_jᵀx + a_j.

    Returns ``K (P, w)``, the upper triangles (d <= e, :func:`symmetric_packing`)
    of the symmetric K_j ⪰ 0 (PSD since Z ≥ 0) as columns, ``B (D, w)`` and
    ``a (w,)``; parameter-only work, differentiable. K_j = 2(Σ_i Z_ji Σ_r Q1_ri Q1_riᵀ
    + Σ_r Q2_rj Q2_rjᵀ) on the P entries only: half the products of the full
    (D, D, r, w) broadcast, and half the columns in every GEMM that contracts
    with K (the pre-activations, Σ_j v_j K_j and their gradients).
    """
    dim, width = params["W1"].shape[1], params["b1"].shape[0]
    rows, cols, _ = symmetric_packing(dim, params["Q1"].device)
    q1 = params["Q1"].view(dim, -1, width)
    q2 = params["Q2"].view(dim, -1, width)
    s1 = (q1[rows] * q1[cols]).sum(1)                          # (P, w)
    s2 = (q2[rows] * q2[cols]).sum(1)
    curv = 2.0 * torch.addmm(s2, s1, params["Z"].T)
    lin = (params["Z"] @ params["W1"] + params["W2"]).T
    const = params["Z"] @ params["b1"] + params["b2"]
    return curv, lin, const


#: elements of one row block of the (rows, D, w) input-Jacobian tensor in the Gram
#: products (float32: 2 MB): see ``gram_rows`` and the module docstring
GRAM_BLOCK = 2 ** 19


def gram_rows(n: int, dim: int, width: int) -> int:
    """Rows per block of the Gram products: ``GRAM_BLOCK`` elements, 64 to n rows."""
    return max(1, min(n, max(64, GRAM_BLOCK // (dim * width))))


def _jacobian_block(xt: torch.Tensor, table: torch.Tensor, start: int, rows: int,
                    width: int) -> torch.Tensor:
    """∇u_j(x_n) for the rows ``start:start+rows`` -> ``(rows, D, w)``: [x, 1] @ [K; Bᵀ]."""
    block = xt[start:start + rows] @ table
    return block.view(block.shape[0], -1, width)


class LinearGram(torch.autograd.Function):
    """H_n = base_n + J_n diag(w_n) J_nᵀ with J_n = ([x_n, 1] @ table).view(D, w), in row blocks.

    Inputs ``xt (n, D+1)`` (constant), ``table (D+1, D*w)``, ``weight (n, w)``,
    ``base (n, D, D)``, ``rows`` (block size). The (n, D, w) tensor J is never
    formed whole: each block of ``rows`` rows is built by one GEMM, used while it
    is in cache, and rebuilt in the backward pass, which needs per block one
    product M = S J (S = G + Gᵀ; H is symmetric) for ∂/∂J = M diag(w) and
    ∂/∂w_j = ½ Σ_d M_dj J_dj, and one GEMM ∂/∂table += [x, 1]ᵀ ∂/∂J.
    """

    @staticmethod
    def forward(ctx, xt: torch.Tensor, table: torch.Tensor, weight: torch.Tensor,
                base: torch.Tensor, rows: int) -> torch.Tensor:
        ctx.save_for_backward(xt, table, weight)
        ctx.rows = rows
        out = base.clone()
        width = weight.shape[1]
        for start in range(0, xt.shape[0], rows):
            jac = _jacobian_block(xt, table, start, rows, width)
            block = out[start:start + rows]
            block.baddbmm_(jac * weight[start:start + rows, None, :], jac.transpose(1, 2))
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        xt, table, weight = ctx.saved_tensors
        rows, width = ctx.rows, weight.shape[1]
        sym = grad_out + grad_out.transpose(1, 2)
        d_table = torch.zeros_like(table)
        d_weight = torch.empty_like(weight)
        for start in range(0, xt.shape[0], rows):
            stop = min(start + rows, xt.shape[0])
            jac = _jacobian_block(xt, table, start, rows, width)
            m = torch.bmm(sym[start:stop], jac)
            torch.sum(m * jac, 1, out=d_weight[start:stop])
            m *= weight[start:stop, None, :]
            d_table.addmm_(xt[start:stop].T, m.view(stop - start, -1))
        return None, d_table, d_weight.mul_(0.5), grad_out, None


def icnn_grad_hess(params: Params, x: torch.Tensor, eps: float, hessian: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form ∇ψ ``(n, D)`` and ∇²ψ ``(n, D, D)`` (None unless ``hessian``).

    With u_j = ½xᵀK_j x + B_jᵀx + a_j (:func:`packed_quadratic_form`) and v = c ⊙ σ(u),

    - every u_j at once is ONE GEMM on the packed outer products x_d x_e, d <= e
      (n × D(D+1)/2; the diagonal weighted ½),
    - ∇ψ = (Σ_j v_j K_j) x + B v + εx, where Σ_j v_j K_j is also the Hessian's
      curvature term (one GEMM on the packed entries, then unpacked),
    - ∇²ψ = Σ_j c_jσ'(u_j)∇u_j∇u_jᵀ + Σ_j v_j K_j + εI, with ∇u_j = K_j x + B_j
      for all units from one GEMM on [x, 1] per row block and the first sum a
      weighted Gram (:class:`LinearGram`).

    Measured in tests/benchmarks/bench_icnn_jko.py against the previous version
    of this function (icnn_baseline.round2_grad_hess); same loss gradients to
    1e-12 in float64 (tests/test_icnn_jko.py). Differentiable with respect to
    the parameters.
    """
    grad, inner, features = _grad_and_curvature(params, x, eps, hessian)
    if not hessian:
        return grad, None
    xt, table, weight = features
    base = inner + eps * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    rows = gram_rows(x.shape[0], x.shape[1], weight.shape[1])
    return grad, LinearGram.apply(xt, table, weight, base, rows)


def _grad_and_curvature(params: Params, x: torch.Tensor, eps: float, hessian: bool):
    """∇ψ, Σ_j v_j K_j ``(n, D, D)`` and (with ``hessian``) the Gram's inputs ``(xt, table, weight)``."""
    n, dim = x.shape
    curv, lin, const = packed_quadratic_form(params)
    width = const.shape[0]
    rows, cols, full = symmetric_packing(dim, x.device)
    half = torch.where(rows == cols, 0.5, 1.0).to(x.dtype)
    xx = x[:, rows] * x[:, cols] * half                      # (n, P)
    u = torch.addmm(const, xx, curv) + x @ lin
    s = torch.sigmoid(u)
    v = s * params["c"]                                       # ∂ψ/∂u >= 0, (n, w)
    inner = (v @ curv.T)[:, full].view(n, dim, dim)           # Σ_j v_j K_j
    # a broadcast product, not bmm(inner, x): the bmm's backward is an outer-product bmm
    grad = (inner * x[:, None, :]).sum(2) + v @ lin.T + eps * x
    if not hessian:
        return grad, inner, None
    # ∇u_j(x_n) = K_j x_n + B_j: the rows [K; Bᵀ] (K symmetric: row e of K_j = column e)
    table = torch.cat([curv[full].view(dim, dim * width), lin.reshape(1, dim * width)], 0)
    xt = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    weight = params["c"] * s * (1.0 - s)                      # (n, w) >= 0
    return grad, inner, (xt, table, weight)


def _cholesky_with_jitter(hess: torch.Tensor, max_tries: int = 4
                          ) -> tuple[torch.Tensor, int]:
    """Cholesky factors of SPD ``(n, D, D)``; non-PD ones (in floating point) get jitter."""
    chol, info = torch.linalg.cholesky_ex(hess)
    bad = info > 0
    n_fixed = int(bad.sum())
    if n_fixed:
        dim = hess.shape[-1]
        eye = torch.eye(dim, dtype=hess.dtype, device=hess.device)
        scale = hess.diagonal(dim1=-2, dim2=-1).mean(-1).abs() + 1e-12
        jitter, fixed = torch.finfo(hess.dtype).eps * 100.0, hess
        for _ in range(max_tries):
            fixed = fixed + (bad * scale * jitter)[:, None, None] * eye
            chol, info = torch.linalg.cholesky_ex(fixed)
            bad = info > 0
            if not bad.any():
                break
            jitter *= 100.0
    return chol, n_fixed


class _LogDetPD(torch.autograd.Function):
    """log det H from a Cholesky factor, with the gradient H⁻¹ from the same factor."""

    @staticmethod
    def forward(ctx, hess: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(chol)
        return 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (chol,) = ctx.saved_tensors
        return grad_out[:, None, None] * torch.cholesky_inverse(chol), None


def logdet_pd(hess: torch.Tensor, max_tries: int = 4) -> tuple[torch.Tensor, int]:
    """log det of a batch of SPD matrices ``(n, D, D)`` by Cholesky -> ``((n,), n_fixed)``.

    Matrices whose factorisation fails (non-PD in floating point) get a
    growing diagonal jitter relative to their mean eigenvalue; ``n_fixed``
    counts them. The gradient (first order only) is H⁻¹ from the same factor
    (``cholesky_inverse``, the jitter treated as a constant): about twice as
    fast as autograd through the Cholesky, and it builds no (n, D, D) graph.
    """
    with torch.no_grad():
        chol, n_fixed = _cholesky_with_jitter(hess, max_tries)
    if not hess.requires_grad:
        return 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1), n_fixed
    return _LogDetPD.apply(hess, chol), n_fixed


def naive_grad_hess(params: Params, x: torch.Tensor, eps: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """∇ψ and ∇²ψ by autograd: one backward pass per input dimension (the original way).

    Reference for tests and the benchmark; slow.
    """
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(icnn_potential(params, x, eps).sum(), x, create_graph=True)
    rows = [torch.autograd.grad(grad[:, d].sum(), x, create_graph=True)[0]
            for d in range(x.shape[1])]
    return grad, torch.stack(rows, dim=1)


# ------------------------------------------------------------------------------ loss
PotentialFn = Callable[[torch.Tensor], torch.Tensor]


def jko_loss(params: Params, x: torch.Tensor, h: float, beta: float, eps: float,
             potential: PotentialFn, naive: bool = False) -> tuple[torch.Tensor, int]:
    """h-scaled JKO objective on a batch ``x (n, D)`` of ρ^(k−1) -> (loss, n_jittered).

    ``naive=True`` uses :func:`naive_grad_hess` and ``torch.logdet`` (reference).
    """
    if naive:
        grad, hess = naive_grad_hess(params, x, eps)
        logdet, n_fixed = torch.logdet(hess), 0
    else:
        grad, hess = icnn_grad_hess(params, x, eps)
        logdet, n_fixed = logdet_pd(hess)
    transport = 0.5 * ((grad - x) ** 2).sum(1).mean()
    free_energy = potential(grad).mean() - logdet.mean() / beta
    return transport + h * free_energy, n_fixed


def train_iteration(params: Params, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                    h: float, beta: float, eps: float, potential: PotentialFn,
                    naive: bool = False) -> tuple[float, int]:
    """One Adam step on :func:`jko_loss` followed by the non-negativity clamp."""
    optimizer.zero_grad(set_to_none=True)
    loss, n_fixed = jko_loss(params, x, h, beta, eps, potential, naive=naive)
    loss.backward()
    optimizer.step()
    clamp_nonnegative_(params)
    return float(loss.detach()), n_fixed


def pretrain_identity(params: Params, sample: Callable[[], torch.Tensor], iters: int,
                      lr: float, eps: float) -> float:
    """Fit ∇ψ(x) ≈ x by Adam on ½E‖∇ψ(X) − X‖²; returns the last loss."""
    optimizer = torch.optim.Adam(list(params.values()), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(iters):
        x = sample()
        optimizer.zero_grad(set_to_none=True)
        grad, _ = icnn_grad_hess(params, x, eps, hessian=False)
        loss = 0.5 * ((grad - x) ** 2).sum(1).mean()
        loss.backward()
        optimizer.step()
        clamp_nonnegative_(params)
    return float(loss.detach())


def cosine_factor(i: int, n: int, final: float) -> float:
    """Learning-rate factor at iteration ``i`` of ``n``: cosine from 1 down to ``final``."""
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * i / max(1, n)))


# ------------------------------------------------------------------ maps and densities
def detached(params: Params, dtype: torch.dtype | None = None) -> Params:
    """A frozen copy of ``params`` (optionally cast)."""
    return {k: v.detach().clone().to(dtype=dtype or v.dtype) for k, v in params.items()}


#: observation log-likelihoods by JKO step: {k: log L(x numpy (n, D)) -> (n,)} (filtering)
ObsLogLik = dict[int, Callable[[np.ndarray], np.ndarray]]


def _obs_weight(obs: ObsLogLik | None, k: int, x: torch.Tensor) -> torch.Tensor | float:
    """log L_k at ``x`` if an observation is assimilated after step ``k`` (else 0)."""
    if not obs or k not in obs:
        return 0.0
    return torch.as_tensor(obs[k](x.detach().cpu().double().numpy()), dtype=x.dtype,
                           device=x.device)


@torch.no_grad()
def push_trajectory(maps: list[Params], x: torch.Tensor, eps: float,
                    logp: torch.Tensor | None = None, obs: ObsLogLik | None = None,
                    first_step: int = 1
                    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Push ``x (n, D)`` through ∇ψ of every map in order, chunked.

    Returns the pushed points, their log-density by change of variables (when
    ``logp (n,)`` is given) and Σ log L_k along each trajectory (observations
    after step k; ``maps[0]`` is step ``first_step``; zeros without ``obs``).
    """
    n = x.shape[0]
    # outputs written in place: chunk results appended to lists and joined, between
    # large temporaries, fragmented the heap (a 1,024,000-row pool: RSS 551 -> 2997 MB)
    out = torch.empty_like(x)
    log_out = None if logp is None else torch.empty_like(logp)
    w_out = torch.zeros(n, dtype=x.dtype, device=x.device)
    for start in range(0, n, CHUNK):
        rows = slice(start, start + CHUNK)
        xc = x[rows]
        lc = None if logp is None else logp[rows]
        wc = w_out[rows]
        for k, params in enumerate(maps, start=first_step):
            grad, hess = icnn_grad_hess(params, xc, eps, hessian=lc is not None)
            if lc is not None:
                lc = lc - logdet_pd(hess)[0]
            xc = grad
            wc += _obs_weight(obs, k, xc)
        out[rows] = xc
        if log_out is not None:
            log_out[rows] = lc
    return out, log_out, w_out


def push(maps: list[Params], x: torch.Tensor, eps: float, logp: torch.Tensor | None = None
         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Push ``x`` through all maps: (points, log-densities or None); see :func:`push_trajectory`."""
    y, logp, _ = push_trajectory(maps, x, eps, logp)
    return y, logp


@torch.no_grad()
def invert_map(params: Params, y: torch.Tensor, eps: float, tol: float = 1e-10,
               max_iter: int = 100, params32: Params | None = None
               ) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Solve ∇ψ(x) = y for every row of ``y (n, D)`` -> (x, n_unconverged, log det ∇²ψ(x)).

    Newton's method on the strongly convex f(x) = ψ(x) − ⟨x, y⟩ with the exact
    Hessian, from the one-step warm start x = 2y − ∇ψ(y) (the maps are near the
    identity, so that is the inverse to first order). A step is accepted when
    it lowers the residual ‖∇ψ(x) − y‖ (the Newton direction is a descent
    direction for it, so halving finds one); the residual at the trial point
    is the next iteration's anyway, so acceptance costs nothing extra, and
    only unconverged rows are computed.

    With ``params32`` (a float32 copy of the map) Newton runs in single
    precision down to a relative residual of 1e-5; one float64 step with the
    float32 Hessian (a gradient-only evaluation: the Hessian's rounding,
    ~1e-7 relative, slows a step from 1e-5 only to ~1e-12) brings it to the
    tolerance, and float64 Newton finishes any row that is not there. The
    log-determinant comes from the float64 Hessian at the converged point.
    """
    scale = 1.0 + y.norm(dim=1)
    if params32 is None:
        x = 2.0 * y - icnn_grad_hess(params, y, eps, hessian=False)[0]
    else:
        y32 = y.float()
        x32 = 2.0 * y32 - icnn_grad_hess(params32, y32, eps, hessian=False)[0]
        x32, hess32 = _newton(params32, y32, x32, eps, 1e-5, max_iter, scale.float())[:2]
        x = x32.to(y.dtype)
        resid = icnn_grad_hess(params, x, eps, hessian=False)[0] - y
        chol, info = torch.linalg.cholesky_ex(hess32.to(y.dtype))
        step = -torch.cholesky_solve(resid[:, :, None], chol)[:, :, 0]
        x = torch.where(torch.isfinite(step) & (info == 0)[:, None], x + step, x)
    x, hess, done = _newton(params, y, x, eps, tol, max_iter, scale)
    return x, int((~done).sum()), logdet_pd(hess)[0]


def _newton(params: Params, y: torch.Tensor, x: torch.Tensor, eps: float, tol: float,
            max_iter: int, scale: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual-decrease Newton for ∇ψ(x) = y; only rows not within ``tol``·scale are computed.

    Returns (x, the Hessian at x (n, D, D), converged (n,) bool).
    """
    n = y.shape[0]
    x = x.clone()
    done = torch.zeros(n, dtype=torch.bool, device=y.device)
    grad, hess = icnn_grad_hess(params, x, eps)
    hess_out = hess.clone()
    rows = torch.arange(n, device=y.device)
    resid = (grad - y).norm(dim=1)
    for _ in range(max_iter):
        finished = resid <= tol * scale[rows]
        if finished.any():
            done[rows[finished]] = True
            keep = ~finished
            rows, grad, hess, resid = rows[keep], grad[keep], hess[keep], resid[keep]
        if rows.numel() == 0:
            break
        x_act, target = x[rows], y[rows]
        chol, _ = torch.linalg.cholesky_ex(hess)
        step = -torch.cholesky_solve((grad - target)[:, :, None], chol)[:, :, 0]
        step = torch.where(torch.isfinite(step), step, target - grad)
        t = torch.ones(rows.numel(), 1, dtype=y.dtype, device=y.device)
        for _ in range(30):
            trial = x_act + t * step
            new_grad, new_hess = icnn_grad_hess(params, trial, eps)
            new_resid = (new_grad - target).norm(dim=1)
            worse = new_resid > (1.0 - 1e-4 * t[:, 0]) * resid
            if not worse.any():
                break
            t = torch.where(worse[:, None], 0.5 * t, t)
        x[rows] = trial
        hess_out[rows] = new_hess
        grad, hess, resid = new_grad, new_hess, new_resid
    return x, hess_out, done


@torch.no_grad()
def pull_back(maps: list[Params], y: torch.Tensor, eps: float, obs: ObsLogLik | None = None
              ) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """Invert all maps (last first).

    Returns ``x0 (n, D)``, Σ_k log det ∇²ψ_k along the way ``(n,)``, the number of
    unconverged inversions and Σ log L_k along the recovered trajectory ``(n,)``.
    """
    logdet = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    weight = torch.zeros_like(logdet)
    bad = 0
    x = y
    single = [detached(m, torch.float32) for m in maps] if y.dtype == torch.float64 else None
    for k in range(len(maps), 0, -1):
        weight = weight + _obs_weight(obs, k, x)
        x, unconverged, step_logdet = invert_map(
            maps[k - 1], x, eps, params32=None if single is None else single[k - 1])
        bad += unconverged
        logdet = logdet + step_logdet
    return x, logdet, bad, weight


def independence_mh(log_w: np.ndarray, n_chains: int, warmup: int, thin: int, n_keep: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Independence Metropolis–Hastings over pre-drawn proposals.

    Proposal ``i`` of chain ``c`` at iteration ``t`` is row ``t * n_chains + c`` of
    ``log_w`` (its log target/proposal ratio). Each chain starts at its first
    proposal; after ``warmup`` iterations every ``thin``-th state is kept.
    Returns the kept rows ``(n_keep,)`` and the acceptance rate.
    """
    lw = log_w.reshape(-1, n_chains)
    chains = np.arange(n_chains)
    current = np.zeros(n_chains, dtype=np.int64)
    kept, accepted = [], 0
    for t in range(1, lw.shape[0]):
        accept = np.log(rng.random(n_chains)) < lw[t] - lw[current, chains]
        accepted += int(accept.sum())
        current = np.where(accept, t, current)
        if t >= warmup and (t - warmup) % thin == 0:
            kept.append(current * n_chains + chains)
    rows = np.concatenate(kept)[:n_keep]
    if rows.shape[0] < n_keep:
        raise ValueError("independence_mh: too few proposals for the requested samples")
    return rows, accepted / max(1, (lw.shape[0] - 1) * n_chains)


def mh_iterations(n_keep: int, n_chains: int, warmup: int, thin: int) -> int:
    """Proposals per chain that :func:`independence_mh` needs for ``n_keep`` samples."""
    return warmup + thin * -(-n_keep // n_chains) + 1


# ---------------------------------------------------------------------------- solver
class IcnnJko(Solver):
    name = "icnn_jko"
    version = "1"
    parameters = {
        "h": [0.05], "width": [64], "rank": [5], "iters": [500], "iters_warm": [0],
        "batch_size": [1024], "lr": [5e-3], "lr_late": [2e-3], "lr_switch_step": [0],
        "pretrain_iters": [1000], "strong_convexity": [1e-6], "pool_size": [0],
        "fresh_samples": [False], "dtype": ["float32"], "data_batch_size": [512],
        "n_samples": [8192], "mh_warmup": [1000], "mh_thin": [2], "lr_final": [0.1],
    }
    capabilities = frozenset({SAMPLES, LOG_DENSITY, GPU, FILTERING})
    labels = {"iters": "it/step", "width": "w", "batch_size": "batch", "data_batch_size": "data batch"}
    description = "JKO with input-convex networks (Mokrov et al. 2021); pushed-sample densities"

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "h", "width", "rank", "iters", "batch_size", "lr",
                         "lr_late", "lr_final", "strong_convexity", "n_samples", "mh_thin")
        if params["lr_final"] > 1:
            raise ValueError(f"solver 'icnn_jko': lr_final is a fraction of lr in (0, 1], "
                             f"got {params['lr_final']!r}")
        for key in ("width", "rank", "iters", "iters_warm", "batch_size", "pretrain_iters",
                    "pool_size", "data_batch_size", "n_samples", "mh_warmup", "mh_thin",
                    "lr_switch_step"):
            value = params[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"solver 'icnn_jko': {key} must be a non-negative integer, "
                                 f"got {value!r}")
        if params["dtype"] not in DTYPES:
            raise ValueError(f"solver 'icnn_jko': dtype must be one of {sorted(DTYPES)}, "
                             f"got {params['dtype']!r}")
        if not isinstance(params["fresh_samples"], (bool, np.bool_)):
            raise ValueError("solver 'icnn_jko': fresh_samples must be true or false, "
                             f"got {params['fresh_samples']!r}")
        if 0 < params["pool_size"] < params["batch_size"]:
            raise ValueError("solver 'icnn_jko': pool_size must be 0 (auto) or >= batch_size "
                             f"({params['pool_size']} < {params['batch_size']})")

    def skip(self, task):
        if getattr(task, "observations", ()) and self.params["fresh_samples"]:
            return True, ("fresh_samples=True cannot follow the filtering law between "
                          "observations (use the sample pool)")
        return False, ""

    # setup -------------------------------------------------------------------------
    def setup(self, task, times, seed, context):
        p = self.params
        self.task, self.times = task, sorted(float(t) for t in times)
        self.h, self.eps = float(p["h"]), float(p["strong_convexity"])
        self.steps = steps_to_times(self.times, self.h)
        self.device, self.dtype = context.device, DTYPES[p["dtype"]]
        self.progress = context.progress
        rng_seed, torch_seed = seed.spawn(2)
        self.rng = np.random.default_rng(rng_seed)
        gen = torch.Generator().manual_seed(int(torch_seed.generate_state(1)[0]))
        self.obs = self._observation_steps(task)
        self.params0 = init_icnn(task.dim, int(p["width"]), int(p["rank"]), gen, self.dtype,
                                 self.device)
        self.info: dict[str, Any] = {"pretrain_loss": pretrain_identity(
            self.params0, self._pretrain_sampler(), int(p["pretrain_iters"]), float(p["lr"]),
            self.eps)}

    def _observation_steps(self, task) -> ObsLogLik:
        """Observation log-likelihoods keyed by the JKO step after which they apply."""
        obs = list(getattr(task, "observations", ()) or ())
        steps = steps_to_times([o.t for o in obs], self.h)
        return {k: (lambda x, y=o.y: task.observation_log_likelihood(x, y))
                for k, o in zip(steps, obs)}

    def _tensor(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype or self.dtype, device=self.device)

    def _pretrain_sampler(self) -> Callable[[], torch.Tensor]:
        """Batches of ρ0, half of them spread 2× around the ρ0 mean of the batch."""
        n = int(self.params["batch_size"])

        def sample() -> torch.Tensor:
            x = self.task.sample_initial(n, self.rng)
            centre = x.mean(0)
            x[: n // 2] = centre + 2.0 * (x[: n // 2] - centre)
            return self._tensor(x)

        return sample

    def _potential(self) -> PotentialFn:
        """Φ on torch tensors, with a fresh data minibatch per call for data tasks."""
        size = int(self.params["data_batch_size"])
        probe = self.task.data_batch(size, self.rng) if size > 0 else None
        if probe is None:
            return lambda y: self.task.potential_torch(y)
        return lambda y: self.task.potential_torch(y, self.task.data_batch(size, self.rng))

    # run ----------------------------------------------------------------------------
    def run(self):
        p = self.params
        n_steps = self.steps[-1]
        beta = float(self.task.beta)
        potential = self._potential()
        batch = int(p["batch_size"])
        fresh = bool(p["fresh_samples"])
        pool_size = int(p["pool_size"]) or batch * max(int(p["iters"]), int(p["iters_warm"]))
        pool = None if fresh else self._tensor(self.task.sample_initial(pool_size, self.rng))
        params = self.params0
        self.maps: list[Params] = []
        # filtering: MH proposals pushed through self.maps so far (see _next_pool)
        self._bank: tuple[torch.Tensor, torch.Tensor, int] | None = None
        step_times, losses, n_jitter, acceptance = [], [], 0, {}
        results = {}
        for k in range(1, n_steps + 1):
            start = time.perf_counter()
            lr = float(p["lr_late"]) if 0 < int(p["lr_switch_step"]) < k else float(p["lr"])
            iters = int(p["iters"]) if k == 1 or int(p["iters_warm"]) == 0 \
                else int(p["iters_warm"])
            optimizer = torch.optim.Adam(list(params.values()), lr=lr)
            order = None
            for i in range(iters):
                optimizer.param_groups[0]["lr"] = lr * cosine_factor(i, iters, float(p["lr_final"]))
                x, order = self._batch(pool, batch, fresh, order)
                loss, fixed = train_iteration(params, optimizer, x, self.h, beta, self.eps,
                                              potential)
                n_jitter += fixed
            if not math.isfinite(loss):
                raise FloatingPointError(f"JKO step {k}: loss is {loss}")
            self.maps.append(detached(params))
            if pool is not None:
                pool = push(self.maps[-1:], pool, self.eps)[0]
            if k in self.obs and k < n_steps:
                # the next block starts from the filtering law: resample the pool by MH
                pool, acceptance[k] = self._next_pool(min(pool.shape[0], MH_POOL))
            step_times.append(time.perf_counter() - start)
            losses.append(loss)
            self.progress(k, n_steps, f"JKO step {k}/{n_steps} loss {loss:.4g}")
            if k in self.steps:
                t = self.times[self.steps.index(k)]
                results[t] = self._result(k, dict(self.info, step_times=step_times[:],
                                                  losses=losses[:], n_jitter=n_jitter,
                                                  mh_acceptance=dict(acceptance)))
        return results

    def _batch(self, pool: torch.Tensor | None, n: int, fresh: bool,
               order: np.ndarray | None) -> tuple[torch.Tensor, np.ndarray | None]:
        """A training batch of ρ^(k−1) and the remaining pool order.

        From the pool, walking through a random permutation (redrawn when used up),
        or (``fresh``) new ρ0 samples pushed through all maps.
        """
        if fresh:
            x0 = self._tensor(self.task.sample_initial(n, self.rng))
            return push(self.maps, x0, self.eps)[0], None
        if order is None or order.shape[0] < n:
            order = self.rng.permutation(pool.shape[0])
        idx = torch.as_tensor(order[:n], device=pool.device)
        return pool[idx], order[n:]

    # filtering ---------------------------------------------------------------------
    def _obs_upto(self, k: int) -> ObsLogLik:
        return {j: f for j, f in self.obs.items() if j <= k}

    def _next_pool(self, n: int) -> tuple[torch.Tensor, float]:
        """``n`` MH samples of the filtering law after the maps learnt so far.

        The proposals (ρ0 draws, their positions after the maps and Σ log L along
        their trajectories) are kept between observation rounds and pushed on
        through the new block's maps only, so all rounds together cost O(K)
        map evaluations instead of O(K²). Rounds share their proposals; each
        round is still an exact independence MH over i.i.d. proposals.
        """
        p = self.params
        chains = min(n, int(p["batch_size"]))
        total = chains * mh_iterations(n, chains, int(p["mh_warmup"]), int(p["mh_thin"]))
        k = len(self.maps)
        bank = self._bank
        if bank is None or bank[0].shape[0] != total:
            x0 = self._tensor(self.task.sample_initial(total, self.rng))
            x, _, log_w = push_trajectory(self.maps, x0, self.eps, None, self._obs_upto(k))
        else:
            x, log_w, done = bank
            x, _, more = push_trajectory(self.maps[done:], x, self.eps, None,
                                         self._obs_upto(k), first_step=done + 1)
            log_w = log_w + more
        self._bank = (x, log_w, k)
        rows, rate = independence_mh(log_w.cpu().double().numpy(), chains, int(p["mh_warmup"]),
                                     int(p["mh_thin"]), n, self.rng)
        return x[torch.as_tensor(rows, device=x.device)], rate

    def _posterior_sample(self, maps: list[Params], n: int, rng: np.random.Generator,
                          dtype: torch.dtype, with_logp: bool = False):
        """``n`` samples of the filtering law after ``len(maps)`` steps by independence MH.

        Proposals: ρ0 pushed through all maps; log target/proposal ratio = Σ log L
        along the trajectory (the Jacobians cancel). Returns (samples, unnormalised
        log-densities or None, acceptance rate); the log-densities lack −log Z.
        """
        p = self.params
        chains = min(n, int(p["batch_size"]))
        per_chain = mh_iterations(n, chains, int(p["mh_warmup"]), int(p["mh_thin"]))
        x0 = self.task.sample_initial(per_chain * chains, rng)
        obs = self._obs_upto(len(maps))
        x, _, log_w = push_trajectory(maps, self._tensor(x0, dtype), self.eps, None, obs)
        rows, rate = independence_mh(log_w.cpu().double().numpy(), chains,
                                     int(p["mh_warmup"]), int(p["mh_thin"]), n, rng)
        rows_t = torch.as_tensor(rows, device=x.device)
        if not with_logp:
            return x[rows_t], None, rate
        # Hessians only along the kept trajectories (a small fraction of the proposals)
        kept0 = x0[rows]
        l0 = self._tensor(self.task.log_density_initial(kept0), dtype)
        x, logp, log_w = push_trajectory(maps, self._tensor(kept0, dtype), self.eps, l0, obs)
        return x, logp + log_w, rate

    def _log_normaliser(self, maps: list[Params], x: torch.Tensor) -> float:
        """log Z of the reweighted pushed law (filtering): quadrature in 1-D, else Monte Carlo.

        In 1-D the unnormalised density is integrated by the trapezoid rule on
        4001 points spanning the MH samples ``x`` ± 5 standard deviations;
        otherwise Z = E_ρ0[Π L] is estimated from 2^17 pushed ρ0 draws.
        """
        if self.task.dim == 1:
            spread = float(x.std())
            grid = torch.linspace(float(x.min()) - 5 * spread, float(x.max()) + 5 * spread,
                                  4001, dtype=torch.float64, device=x.device)[:, None]
            log_q = self._unnormalised_log_density(maps, grid).cpu().numpy()
            top = log_q.max()
            return float(top + np.log(np.trapezoid(np.exp(log_q - top), grid.cpu().numpy()[:, 0])))
        x0 = self._tensor(self.task.sample_initial(2 ** 17, self.rng), torch.float64)
        _, _, log_w = push_trajectory(maps, x0, self.eps, None, self._obs_upto(len(maps)))
        log_w = log_w.cpu().numpy()
        top = log_w.max()
        return float(top + np.log(np.mean(np.exp(log_w - top))))

    def _unnormalised_log_density(self, maps: list[Params], y: torch.Tensor) -> torch.Tensor:
        """log ρ0(x0) − Σ log det + Σ log L along the pulled-back trajectory of ``y``."""
        out = []
        for start in range(0, y.shape[0], CHUNK):
            x0, logdet, _, log_w = pull_back(maps, y[start:start + CHUNK], self.eps,
                                             self._obs_upto(len(maps)))
            log0 = self._tensor(self.task.log_density_initial(x0.cpu().numpy()), torch.float64)
            out.append(log0 - logdet + log_w)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)

    # results -------------------------------------------------------------------------
    def _result(self, k: int, info: dict) -> SolverResult:
        maps64 = [detached(m, torch.float64) for m in self.maps[:k]]
        filtering = bool(self._obs_upto(k))
        log_z = 0.0
        if filtering:
            # one MH run serves the normaliser's grid, the samples and the metrics' draws
            cache_x, cache_logp, rate = self._posterior_sample(
                maps64, FILTER_DRAWS + int(self.params["n_samples"]), self.rng, torch.float64,
                True)
            log_z = self._log_normaliser(maps64, cache_x)
            cache_x, cache_logp = cache_x.cpu().numpy(), cache_logp.cpu().numpy() - log_z
            info = dict(info, final_mh_acceptance=rate)
        info = dict(info, log_normaliser=log_z)

        def draw(n: int, rng: np.random.Generator):
            if filtering and n <= cache_x.shape[0]:
                rows = rng.choice(cache_x.shape[0], size=n, replace=False)
                return cache_x[rows], cache_logp[rows]
            if filtering:
                x, logp, _ = self._posterior_sample(maps64, n, rng, torch.float64, True)
                return x.cpu().numpy(), logp.cpu().numpy() - log_z
            x0 = self.task.sample_initial(n, rng)
            l0 = self._tensor(self.task.log_density_initial(x0), torch.float64)
            x, logp = push(maps64, self._tensor(x0, torch.float64), self.eps, l0)
            return x.cpu().numpy(), logp.cpu().numpy()

        def log_density(y: np.ndarray) -> np.ndarray:
            yt = self._tensor(np.asarray(y, dtype=np.float64), torch.float64)
            return self._unnormalised_log_density(maps64, yt).cpu().numpy() - log_z

        samples, _ = draw(int(self.params["n_samples"]), self.rng)
        return SolverResult(samples=samples, log_density=log_density, draw=draw, info=info,
                            law=IID_DENSITY)
