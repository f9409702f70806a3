"""JKO scheme with input-convex neural networks (Mokrov et al., NeurIPS 2021).

Each JKO step of size h learns a convex potential ψ_k (a DenseICNN) and sets
ρ^(k) = ∇ψ_k # ρ^(k−1), minimising over the network parameters

    L(ψ) = ½E‖∇ψ(X) − X‖² + h·(E Φ(∇ψ(X)) − β⁻¹ E log det ∇²ψ(X)),  X ~ ρ^(k−1),

which is h times the JKO objective (same minimiser; it is the scaling the
original code used). Φ is estimated on a data minibatch for tasks whose
``data_batch`` returns one (posteriors).

Network: a DenseICNN (two hidden layers of width w, rank-r quadratic blocks,
softplus), its gradient and Hessian in closed form, log det by Cholesky, and
the pushes and Newton inversions below: :mod:`numerics.icnn` and
:mod:`numerics.icnn_maps` (shared with :mod:`solvers.vwgf`; moved there
unchanged, the outputs bit-identical).
Training (round 4 of issue 36): the loss takes ∇ψ and log det ∇²ψ from one
fused Function (:func:`numerics.icnn.icnn_grad_logdet`; same loss and
gradients as the previous path to ~1e-15 in float64, tests/test_icnn_jko.py)
and each step's Adam is ``fused=True`` (:func:`jko_optimizer`); an iteration
measured 1.24x the previous path at D = 12, w = 64, 1.26x at D = 2, w = 256,
1.23x at D = 32, w = 256 (side by side, tests/benchmarks/bench_icnn_jko.py). Float32
runs therefore differ from earlier ones at the rounding level, amplified by training.

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

Free-energy terms (tasks/free_energy.py; ``supports``)
-----------------------------------------------------
The loss's free energy generalises to F = ∫V(·, t) dρ + ½∬W dρ dρ + β⁻¹U:

- V(x, t) (``time_dependent``) is taken at the step's end t_k = k·h (the
  implicit step's time), through ``task.potential_t_torch``.
- W (``interaction``): ½E W(∇ψ(X) − ∇ψ(X')) over pairs of consecutive rows of
  the batch (cyclic; the batch is a random draw, so the pairs are
  independent), as vwgf's ``map_loss``.
- U porous medium (``porous_medium``): with ρ_k(∇ψ(x)) = ρ_{k−1}(x)/det ∇²ψ(x),
  β⁻¹∫ρ_k^m/(m−1) = β⁻¹/(m−1) E_x[(ρ_{k−1}(x)/det ∇²ψ(x))^(m−1)], through the
  same log det as the entropy. It needs log ρ_{k−1} at the training samples:
  the pool carries it (log ρ0 of its draws, then the change of variables at
  every push, in the training dtype); ``fresh_samples`` pushes log ρ0 along.
  Without an internal energy (the contract allows it) β⁻¹ = 0.
On the existing tasks (V + entropy) the code path and its numbers are unchanged
(bit-identical samples, log-densities and losses on OU, fresh-sample and
filtering runs before and after).

Measured (one thread; the 2-core machine under a load of ~5 from other jobs, so
wall times are upper bounds; task seed 0, solver seed 1; width 64, batch 512,
300 it/step, 1000 pre-training iterations):

- porous_medium D = 2, m = 2 (SymKL is +∞: compact support), E|x − c|² at
  t = 0.02 against the exact 0.1542: 0.1379 / 0.1429 / 0.1513 at h = 0.005 /
  0.0025 / 0.001 (−10.6 / −7.3 / −1.9 %; at t = 0.005: 0.0687 / 0.0739 / 0.0774
  against 0.0824), 7.5 / 11.7 / 41 s. 1000 it/step at h = 0.005 read 0.1359:
  the lag is the time step's (the JKO scheme lags the fast start, h = 5τ0), not
  the optimiser's. The law's front passes the support a little (h = 0.001:
  largest |x − c| 0.81 against R = 0.68; a smooth map cannot make the edge).
- aggregation D = 2, h = 0.05: SymKL 0.0050 / 0.0080 at t = 0.5 / 1 (relative
  mean error 0.018 / 0.014, covariance 0.031 / 0.023), 52 s.
- moving_trap D = 2, h = 0.05: SymKL 0.0085 / 0.0094 at t = 0.5 / 1 (relative
  mean error 0.021 / 0.060), 119 s.
- One step plus pre-training: aggregation D = 8 6.5 s, moving_trap D = 16 9.6 s;
  porous_medium D = 4, two steps of h = 0.001, 6.3 s.

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

from numerics.icnn import (Params, clamp_nonnegative_, icnn_grad_hess, icnn_grad_logdet,
                           init_icnn, logdet_pd, naive_grad_hess)
from numerics.icnn_maps import (ObsLogLik, cosine_factor, detached, identity_pretrain_sampler,
                                pretrain_identity, pulled_back_log_density, push, push_trajectory,
                                step_potential)
from solvers.base import (FILTERING, GPU, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver,
                          SolverResult, require_positive, steps_to_times)
from tasks.free_energy import (ENTROPY, INTERACTION, POROUS_MEDIUM, POTENTIAL, TIME_DEPENDENT,
                               free_energy_of)

#: filtering: at most this many MH samples of the filtering law start a block
MH_POOL = 2 ** 16
#: filtering: MH samples kept at an evaluation time for the metrics' draws (beyond n_samples)
FILTER_DRAWS = 2 ** 13

DTYPES = {"float32": torch.float32, "float64": torch.float64}


# ------------------------------------------------------------------------------ loss
PotentialFn = Callable[[torch.Tensor], torch.Tensor]


def jko_loss(params: Params, x: torch.Tensor, h: float, beta: float, eps: float,
             potential: PotentialFn, naive: bool = False, interaction: PotentialFn | None = None,
             exponent: float | None = None, logp: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, int]:
    """h-scaled JKO objective on a batch ``x (n, D)`` of ρ^(k−1) -> (loss, n_jittered).

    The free energy of T = ∇ψ's push-forward, estimated on the batch: E V(T(X))
    (``potential``; a time-dependent V comes already taken at the step's end);
    with ``interaction`` W, ½E W(T(X) − T(X')) over pairs of consecutive rows
    (cyclically; the batch is in random order, so each pair is two independent
    draws and the mean is unbiased for ½∬W dρ dρ, as :func:`solvers.vwgf.map_loss`);
    and β⁻¹ times the internal energy through the log-determinant: the entropy
    E log ρ^(k−1)(X) − E log det ∇²ψ(X) without its constant first part, or,
    with ``exponent`` m and ``logp`` = log ρ^(k−1) at the rows, the porous medium
    ∫ρ^m/(m−1) = E[(ρ^(k−1)(X)/det ∇²ψ(X))^(m−1)]/(m−1) (the pushed density at
    T(X) is ρ^(k−1)(X)/det ∇²ψ(X)). ``naive=True`` uses :func:`naive_grad_hess`
    and ``torch.logdet`` (reference).
    """
    if naive:
        grad, hess = naive_grad_hess(params, x, eps)
        logdet, n_fixed = torch.logdet(hess), 0
    elif not x.requires_grad:
        grad, logdet, n_fixed = icnn_grad_logdet(params, x, eps)
    else:
        grad, hess = icnn_grad_hess(params, x, eps)
        logdet, n_fixed = logdet_pd(hess)
    transport = 0.5 * ((grad - x) ** 2).sum(1).mean()
    if exponent is None:
        free_energy = potential(grad).mean() - logdet.mean() / beta
    else:
        power = torch.exp((exponent - 1.0) * (logp - logdet))
        free_energy = potential(grad).mean() + power.mean() / ((exponent - 1.0) * beta)
    if interaction is not None:
        free_energy = free_energy + 0.5 * interaction(grad - torch.roll(grad, 1, dims=0)).mean()
    return transport + h * free_energy, n_fixed


def jko_optimizer(params: Params, lr: float) -> torch.optim.Optimizer:
    """The Adam of a JKO step: ``fused=True`` (one kernel for all parameters).

    Measured (one thread, 300 steps on the parameters of D = 12, w = 64): 78 µs a
    step against 230 µs for the default single-tensor Adam and 185 µs for
    ``foreach``; parameters after 300 steps differ by 1.6e-7 relative (float32
    rounding; ``foreach`` is bit-identical to the default but saves a quarter
    of the time only).
    """
    return torch.optim.Adam(list(params.values()), lr=lr, fused=True)


def train_iteration(params: Params, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                    h: float, beta: float, eps: float, potential: PotentialFn,
                    naive: bool = False, **terms: Any) -> tuple[float, int]:
    """One Adam step on :func:`jko_loss` (``terms``: its optional terms) and the clamp."""
    optimizer.zero_grad(set_to_none=True)
    loss, n_fixed = jko_loss(params, x, h, beta, eps, potential, naive=naive, **terms)
    loss.backward()
    optimizer.step()
    clamp_nonnegative_(params)
    return float(loss.detach()), n_fixed


# ------------------------------------------------------------------------- filtering
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
    #: the free-energy terms handled (tasks/free_energy.py): V, at the step's end time when
    #: it depends on t; W by pairs of batch rows; either internal energy through log det ∇²ψ
    supports = frozenset({POTENTIAL, TIME_DEPENDENT, INTERACTION, ENTROPY, POROUS_MEDIUM})
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
        self.energy = free_energy_of(task)
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
        return identity_pretrain_sampler(self.task.sample_initial, int(self.params["batch_size"]),
                                         self.rng, self._tensor)

    def _potential(self, t: float = 0.0) -> PotentialFn:
        """Φ on torch tensors: at time ``t`` if it depends on t, a data minibatch per call
        for data tasks (built once per run then: its probe draws from the training stream)."""
        return step_potential(self.task, t, TIME_DEPENDENT in self.energy.terms,
                              int(self.params["data_batch_size"]), self.rng)

    def _loss_terms(self) -> dict[str, Any]:
        """The optional terms of :func:`jko_loss` for this task's free energy."""
        terms: dict[str, Any] = {}
        if INTERACTION in self.energy.terms:
            terms["interaction"] = self.task.interaction_torch
        if self.energy.internal == POROUS_MEDIUM:
            terms["exponent"] = float(self.energy.exponent)
        return terms

    # run ----------------------------------------------------------------------------
    def run(self):
        p = self.params
        n_steps = self.steps[-1]
        # no internal energy (allowed by the contract): β⁻¹ = 0 drops the log-determinant
        beta = float(self.task.beta) if self.energy.internal is not None else math.inf
        moving = TIME_DEPENDENT in self.energy.terms
        potential = None if moving else self._potential()
        terms = self._loss_terms()
        batch = int(p["batch_size"])
        fresh = bool(p["fresh_samples"])
        pool_size = int(p["pool_size"]) or batch * max(int(p["iters"]), int(p["iters_warm"]))
        pool = pool_logp = None
        if not fresh:
            pool0 = self.task.sample_initial(pool_size, self.rng)
            pool = self._tensor(pool0)
            if "exponent" in terms:
                # the porous energy needs log ρ^(k−1) at the training samples: carried along
                pool_logp = self._tensor(self.task.log_density_initial(pool0))
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
            optimizer = jko_optimizer(params, lr)
            order = None
            if moving:
                potential = self._potential(k * self.h)  # the implicit step's end time
            for i in range(iters):
                optimizer.param_groups[0]["lr"] = lr * cosine_factor(i, iters, float(p["lr_final"]))
                x, logp, order = self._batch(pool, pool_logp, batch, fresh, order,
                                             "exponent" in terms)
                loss, fixed = train_iteration(params, optimizer, x, self.h, beta, self.eps,
                                              potential, logp=logp, **terms)
                n_jitter += fixed
            if not math.isfinite(loss):
                raise FloatingPointError(f"JKO step {k}: loss is {loss}")
            self.maps.append(detached(params))
            if pool is not None:
                pool, pool_logp = push(self.maps[-1:], pool, self.eps, pool_logp)
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

    def _batch(self, pool: torch.Tensor | None, pool_logp: torch.Tensor | None, n: int,
               fresh: bool, order: np.ndarray | None, with_logp: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor | None, np.ndarray | None]:
        """A training batch of ρ^(k−1), its log ρ^(k−1) (``with_logp``) and the pool order left.

        From the pool, walking through a random permutation (redrawn when used up),
        or (``fresh``) new ρ0 samples pushed through all maps.
        """
        if fresh:
            x0 = self.task.sample_initial(n, self.rng)
            l0 = self._tensor(self.task.log_density_initial(x0)) if with_logp else None
            x, logp = push(self.maps, self._tensor(x0), self.eps, l0)
            return x, logp, None
        if order is None or order.shape[0] < n:
            order = self.rng.permutation(pool.shape[0])
        idx = torch.as_tensor(order[:n], device=pool.device)
        return pool[idx], None if pool_logp is None else pool_logp[idx], order[n:]

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
        return pulled_back_log_density(maps, y, self.eps, self.task.log_density_initial,
                                       self._obs_upto(len(maps)))

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
