"""Self-consistent velocity matching (Li, Hurault & Solomon, NeurIPS 2023).

One network v_θ(t, x) is trained on [0, T], T = the largest evaluation time,
so that its flow dx/dt = v_θ(t, x), x(0) ~ ρ0, has marginals ρ^θ_t solving the
Fokker–Planck equation, i.e. so that it is self-consistent:

    v_θ(t, ·) = −∇Φ − β⁻¹∇log ρ^θ_t.

Every requested time is then read off the same flow.

Algorithm (one outer iteration = one Adam step: the authors' train_flow_rep = 1)
-------------------------------------------------------------------------------
1. draw B fresh x0 ~ ρ0 and K stratified times t_k = (k + U_k)·T/K,
   k = 0..K−1, shared by the batch, with t = 0 added;
2. integrate the ODE with the *current* parameters without gradient (the
   method's stop-gradient, its "biased gradient") to the points x_{t_k}, by
   adaptive Dormand–Prince 5(4) at rtol = atol = ``ode_tol`` = 1e-4 (the
   authors' integrator and tolerance; ``integrator = "rk4"``: the previous
   fixed-step RK4, below);
3. one Adam step on the integration-by-parts (IBP) loss at those frozen points,

       L(θ) = mean_{k,i} |v_θ|² − 2[v_θ·b + β⁻¹ div_x v_θ]  at (t_k, x_i),  b = −∇Φ,

   which is E|v_θ − v*|² up to a θ-free constant, v* = b − β⁻¹∇log ρ_t,
   because E_ρ[v·∇log ρ] = −E_ρ[div v]: neither the score nor the density
   of the current flow is needed. A data task's ∇Φ would be a minibatch
   estimate (``data_batch_size``; see the tasks below).

The fixed point of the iteration is the self-consistent field. The IBP loss
is used for every task (the authors use it for their mixture task; their OU
script can also regress on scores carried along the ODE, which needs the
gradient of the divergence at every ODE step and is not implemented).

Network and divergence: :mod:`numerics.velocity_net` — the authors' VNN (a
3 × ``width`` SiLU trunk with LayerNorm on [x, emb(t)] plus a rank-``rank`` skip
Uᵀ(Vx) + c from the time embedding) and div v_θ exactly in the forward pass
(``hutchinson = 0``, always for densities) or by P probes (``hutchinson = P``).

ODE and densities
-----------------
Training (``integrator = "dopri5"``, the default since #36): adaptive
Dormand–Prince 5(4) at rtol = atol = ``ode_tol`` (:func:`numerics.dopri5.dopri5_path`,
whose docstring states its step control and how it matches the authors' diffrax
solve), the first attempt being the step proposed after the previous iteration's
first step; it needs no stiffness rule. The rule below sets the evaluation's
RK4 steps. ``integrator = "rk4"`` trains on the fixed-step path
below (``trajectory_at``: ceil(Δt·steps) RK4 steps between consecutive
training times), the previous default, kept for comparisons.

Evaluation (``draw``, ``log_density``, samples, the self-consistency check)
and ``integrator = "rk4"`` training: classical RK4 with equal steps no longer
than 1/``ode_steps``: ``draw`` at time t takes ceil(t·ode_steps) equal steps
on [0, t] and ``log_density`` the same grid backwards. A fixed step here
keeps an evaluation's cost fixed, and
forward and backward passes on one grid make a round trip return to its
start to O(h⁴) (measured 7e-7 in x and 2.5e-6 in log-density on a 2-D test
model, float32). 32 steps per unit time: RK4 is stable for hλ < 2.78, and the
velocity Jacobian of an OU flow, −A + β⁻¹S_t⁻¹, starts at ≈ 1 − λ_max(A)
(≈ −39 for the stiffest instance with D ≤ 12 on task seeds 0–4 and 100–101) and
relaxes to 0 within ≈ 1/(2λ_max). 128 steps did not change the result on OU
D = 4, task seed 100 (λ_max 32.5; SymKL 0.052 / 0.052 at t = 0.5 / 0.9 against
0.058 / 0.054 with 32, 500 iterations at lr 1e-3): the ODE is not what limits
accuracy there. The benchmark's own instances are stiffer: λ_max(A) = 181 at
OU D = 11, seed 2 (130 at D = 32 seed 1, 91 at D = 64 seed 2), where 32 steps
diverged (loss NaN at iteration 13). So ``setup`` estimates λ = max |eig ∇²Φ|
at 256 ρ0 draws (power iteration on central-difference Hessian-vector
products of ``grad_potential``, 30 iterations: exact to 4 digits on OU) and
raises the step count to ceil(λ / 2.5) per unit time where that exceeds
``ode_steps`` (73 / 52 / 37 on those three; the mixtures' λ ≤ 65 keep 32) —
what Dopri5's step control does by itself. The rows' ``info`` records λ
(``stiffness``) and the steps used. Data posteriors keep ``skip``'s rule below.
The raise stops at ``MAX_RAISED_STEPS`` = 512 per unit time (λ ≈ 1280): a
task that needs more is refused in ``setup`` with the step count and its cost
in the message (set ``ode_steps`` that high to run it anyway), so that no run
trains and evaluates for hours with a step count nobody chose: the cost of
everything grows linearly with the steps, and the estimate grows as
max |x|² over the ρ0 draws for a quartic Φ (λ = 12x² − 4 per coordinate of
the double well: N(0, 4I) starts already give λ ≈ 730, i.e. 291 steps).
``draw(n, rng)`` pushes fresh ρ0 draws forward integrating dℓ/dt = −div v_θ
(exact divergence) from ℓ(0) = 0, and returns log ρ0(x0) + ℓ(t) (added in
float64). ``log_density(y)`` integrates x and ℓ backwards from (t, y) with
ℓ(t) = 0 and returns log ρ0(x0) − ℓ(0) (instantaneous change of variables).
Rows are chunked so that the (rows, D, width) tangents stay ≈ 16 MB.
Evaluation runs in the training dtype; the outputs are float64.

Defaults (CPU sizes), the measurements behind them
--------------------------------------------------
iters 1000, batch 256, K = 10, width 64, rank 20, lr 3e-3 with a cosine decay
to 1e-3 × lr, Adam β = (0.9, 0.9), integrator dopri5 at ode_tol 1e-4 (training),
ode_steps 32 (evaluation), exact divergence, float32.
Departures from the authors' configurations, all for one CPU thread: width
64 (256), batch 256 (1000), K = 10 (20), 1000 iterations (5000–10000), lr 3e-3
(1e-3), one Dopri5 step shared by the batch (one per trajectory), fixed-step
RK4 at evaluation (Dopri5), forward-mode divergence (reverse mode). Kept:
the cosine decay to 1e-3×, β2 = 0.9 (their command lines), no clipping,
float32, stratified times with t = 0, the IBP loss, the network, their
integrator and tolerance for the training ODE.

Measured (with the previous RK4 training ODE; Dopri5 left SymKL unchanged where
compared, "Speed" below) on OU with task seeds 100 and 101 (outside the
benchmark's 0–2), solver seed SeedSequence(7), evaluation times 0.1, ..., 1.0 (T = 1), one
torch thread on a 2-core machine shared with another job (load 2–5, so the
times are upper bounds); SymKL = ``metrics.symkl.SYMKL`` (8192 draws a side,
standard error ≈ 4e-4 at these values; negative values are noise):

    D  task seed  λ(A)          run (s)   SymKL t = 0.5   SymKL t = 0.9
    1  100        0.52          50        2e-5            5e-5
    1  101        0.79          48        3e-5            6e-5
    2  100        0.37–1.7      57        −2e-4           −3e-4
    2  101        0.42–2.5      60        −4e-4           −3e-4
    4  100        0.22–32.5     77        0.0057          0.0061
    4  101        0.22–3.3      76        0.0003          0.0006
    12 101        0.08–39.7     134–142   0.030           0.032

(The benchmark's ICNN-JKO medians on task seeds 0–2: 2e-4 / 4e-4 at D = 1,
1e-3 at D = 2, 2e-3 at D = 4, 0.018 / 0.008 at D = 12 in ≈ 410 s.) Runs at
other settings (OU D = 4, task seed 100, SymKL at t = 0.5 / 0.9):

    500 iterations,  lr 1e-3, β2 0.999   0.058 / 0.054
    500 iterations,  lr 3e-3, β2 0.999   0.022 / 0.018
    500 iterations,  lr 1e-2, β2 0.999   0.0088 / 0.0082
    500 iterations,  lr 3e-3, K = 20     0.033 / 0.0095
    1000 iterations, lr 3e-3, β2 0.999   0.0075 / 0.0066
    1000 iterations, lr 1e-2, β2 0.999   0.0056 / 0.0070
    1000 iterations, lr 1e-2, β2 0.9     0.0049 / 0.0066
    1000 iterations, lr 3e-3, β2 0.9     0.0057 / 0.0061   (the defaults)

and on OU D = 12, task seed 101, 1000 iterations: lr 1e-2 (β2 0.999) 0.43 /
0.55; lr 3e-3 (β2 0.9) 0.030 / 0.032; lr 1e-3 (β2 0.9) 0.028 / 0.054; an
exponential moving average of the weights (0.99) on top of the defaults
0.029 / 0.030 (not kept). A larger rate pays at a few hundred iterations and
is too noisy in D = 12: 3e-3 is the compromise.

Why the loss's noise sets the accuracy: at the fixed point the per-sample
gradient of the IBP loss is the Stein term −2β⁻¹(∇log ρ·∂_θv + ∂_θ div v),
zero in mean but of size |∇log ρ_t|·|∂_θv|, and |∇log ρ_t| ≈ sqrt(tr S_t⁻¹)
grows with the stiffness of Φ. On OU D = 12 (task seed 101) the learned
velocity's error on ρ_t was 0.1–0.2 per eigen-direction of A at lr 1e-2 and
0.02–0.05 at 3e-3, the level a noise-free regression on the exact velocity
(an oracle, not self-consistent) reached at lr 1e-2 in the same 1000
iterations. The authors' 10⁴ iterations of 1000 × 21 points average 70× more
samples than the defaults.

Cost model
----------
One iteration = the no-grad training ODE, B·6·(accepted + rejected steps)
network evaluations with Dopri5 (as many as the field needs at the
tolerance: 1–2 steps on OU D = 2, ≈ 5 at D = 10 near the initial weights;
``info["ode"]`` reports the run's mean), B·(T·ode_steps + K)·4 with RK4,
plus the loss at B·(K + 1) points with D tangent rows each (exact; P with Hutchinson), forward and
backward, ∝ B·(K + 1)·D·width². The loss dominates from D ≈ 4: at the
defaults on one thread ≈ 0.05 s per iteration at D ≤ 2 and ≈ 0.13 s at
D = 12 (run times above). Evaluation: one ``draw`` or ``log_density`` of n
points at time t costs n·ceil(t·ode_steps)·4 evaluations with D tangent rows
(8192 points at t = 1 and D = 12: ≈ 8 s; at D = 2, 32 steps: 2000 points in
0.3–1.4 s on a loaded core, on tasks/double_well.py as on the tilted well of
tests/test_generic_potentials.py, at reference points and at points 30× further
out alike); ``samples`` (``n_samples``, no density) are cheap. Bounded: with the
step count at most max(ode_steps, 512) per unit time, an evaluation of n
points at t costs at most n·ceil(t·max(ode_steps, 512))·4 network
evaluations, 16× the default's. The self-consistency check (below) adds 3 × 256
trajectories per output time: 1.1 / 1.2 s at D = 2 / 12 and t = 1 (one loaded
core, where a log-density of 8192 points took 6.6 / 19.6 s). Memory grows with B·(K + 1)·D·width (the saved
tangents).

Self-diagnostics (``info["diagnostics"]``, no reference used)
-------------------------------------------------------------
``self_consistency`` (median) and ``self_consistency_l2``: the relative
residuals of v_θ = b − β⁻¹∇log ρ^θ_t at 256 fresh draws of the returned law
(:meth:`Scvm.self_consistency`; 0 for the exact flow, ~1 for a velocity that
misses the score). ``ibp_loss``: the last 5 % of iterations' mean IBP loss
(E|v − v*|² up to a constant of the task: it compares runs of one task
only). ``ode_steps_per_unit``: the evaluation's RK4 steps. Measured (median; t = 0.5,
and 1 where given): OU D = 2 (the tests' tiny configuration) 0.025; the tilted
2-D double well of tests/test_generic_potentials.py (width 32, batch 128)
after 100 iterations, whose flow keeps its mass in the start well (left-well
mass 0.921 against 0.829), 0.89, and after 500 iterations (0.829 / 0.780
against 0.829 / 0.770) 0.25; the rotated double well of tasks/double_well.py
(D = 2, β = 2) after 300 iterations, stuck in the start well (right-well mass
1.00 against 0.93, KL(ref‖solver) ≈ 1.5), 0.61 / 0.67, and with the defaults
(1000 iterations: 0.942 / 0.189 against 0.932 / 0.190 at t = 0.5, 0.06 off at
t = 1) 0.25 / 0.35. So ≳ 0.5 flags a failed flow, ≲ 0.3 a usable one on these
wells. The failure there is training length, not the ODE (32 steps per unit
time, stiffness 34): the cosine schedule over 300 iterations has decayed before
the barrier crossing is learnt.

Tasks
-----
OU and the stationary mixture (T = 4: 4× the ODE work per iteration) are
supported; filtering tasks are skipped (no observation updates).
Bayesian logistic regression (``data_batch``): supported, with ∇Φ on a fresh
data minibatch each iteration (unbiased; the loss is linear in b), the law at
T approximating the posterior. Such a flow is stiff: the Hessian of Φ at w = 0
reaches ≈ 2.2e2 on ``synthetic`` and ≈ 1.5e3 on ``breast_cancer`` (|∇Φ| ≈ 3e2
and 7e2 at prior draws), so RK4 needs ≳ λ/2.78 steps per unit time. On
synthetic (task seed 0, 1000 iterations, 184 s) ode_steps = 128 gave test
log-likelihood −0.405 and accuracy 0.83 (SVGD, EM and ICNN-JKO: −0.400 to
−0.404), while the default 32 diverged (loss −inf at iteration 593).
``skip`` therefore refuses tasks with data minibatches below
``DATA_TASK_MIN_ODE_STEPS`` = 128; breast_cancer would need ≳ 550 (not
measured: a GPU-sized run, D = 32 tangent rows per point).

OU above D = 12 (the ``large`` profile, defaults, one thread; SymKL at t = 0.9
over task seeds 0 / 1 / 2): D = 16: 0.0071 / 0.26 / 0.0076 (131 s a run);
D = 32: 0.037 / 4.3 / 0.081 (216 s). Seed 1 is the stiff instance: A's largest
eigenvalue is 59 at D = 16 and 130 at D = 32 against 7–21 for seeds 0 and 2
(RK4 is stable there: the step count follows λ_max), and ICNN-JKO reads
0.015 and 0.021 on it. Its samples stay close (energy distance 3.5e-3 at
D = 32, against ≤ 1.2e-3 on seeds 0 and 2): it is the density, i.e. the
divergence along the learnt flow, that fails. From D = 32 the skip connection
also cannot represent the OU velocity exactly (rank 20 < D), which matches
the growth of the error on seeds 0 and 2 from D = 16 to 32 (5× and 11×). Rank D
helps (task seeds 100 and 101, outside the benchmark's, D = 32, t = 0.9):
rank 20 0.039 / 0.048, rank 32 0.029 / 0.031, at the same cost (≈ 220 s); still
above ICNN-JKO (0.019 median on seeds 0–2). At D = 64 (rank 20) the density is
unusable: SymKL 1.7 / 1.2 / 10.3, relative covariance error 0.18–0.36 against
the oracle's 0.07 (6.5 min of training, peak RSS 1.73 GB).

Speed
-----
Measured against the previous code and against the authors' JAX code: in the
docstring of :mod:`numerics.velocity_net` (the network, its exact divergence and
the RK4 paths; split from this module, unchanged, with the Dormand–Prince solver
of :mod:`numerics.dopri5`).

Effect on accuracy (OU, 300 iterations, defaults otherwise, solver seed
SeedSequence(7), SymKL at t = 0.5 / 0.9 (``metrics.symkl.symkl_mc``, 8192
draws a side), RK4 training → Dopri5 training):

    D = 2,  task seed 100   0.00052 / 0.00103  →  0.00052 / 0.00101
    D = 4,  task seed 101   0.00200 / 0.00322  →  0.00200 / 0.00323
    D = 4,  task seed 100   0.0373  / 0.0746   →  0.0430  / 0.0642
    D = 10, task seed 100   0.0089  / 0.0102   →  0.0073  / 0.0107

i.e. unchanged within the run-to-run spread of a 300-iteration fit (seed 100
at D = 4 is the stiff instance, where neither is converged); training time
(wall, loaded machine) 27 → 17 s, 76 → 40 s, 59 → 49 s, 43 → 29 s. The
committed SCVM results were made with the RK4 training ODE: a rerun with the
new default changes them at this level (``integrator = "rk4"`` reproduces the
previous path).

Seeds: ``setup`` splits its SeedSequence into the training stream (ρ0 draws,
times, data minibatches), the initial weights (a CPU torch.Generator), the
Hutchinson probes (a generator on the run's device) and the result samples.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from solvers.base import (GPU, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          random_directions, require_positive, self_consistency_residual)

from numerics.dopri5 import DP_FIRST_STEP, OdeStats, dopri5_path
from numerics.velocity_net import (Params, init_velocity_net, network_field, rk4_path,
                                   steps_for, time_features, trajectory_at, velocity)

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Adam's (β1, β2): the authors' runs set b2 = 0.9 (optax's default is 0.999)
ADAM_BETAS = (0.9, 0.9)
#: points x tangent rows x width allowed in one evaluation chunk (memory bound, ~16 MB
#: per float32 tensor of the tangent propagation)
CHUNK_ELEMENTS = 2 ** 22
#: the fewest RK4 steps per unit time a task with data minibatches runs with: the
#: default 32 diverged on bayesian_logreg/synthetic (Hessian of Φ up to ≈ 2e2), 128 matched
#: SVGD there (module doc); ``skip`` refuses such tasks below it
DATA_TASK_MIN_ODE_STEPS = 128
#: RK4 steps per unit time are raised to ceil(λ / RK4_STEP_LAMBDA) where λ estimates the
#: largest |eigenvalue| of ∇²Φ (RK4's stability interval on the real axis is hλ < 2.785;
#: 2.5 keeps a margin for the learned field's own Jacobian)
RK4_STEP_LAMBDA = 2.5
#: the most RK4 steps per unit time the stiffness rule raises ``ode_steps`` to (16x the
#: default 32; OU's stiffest instances need 73): above it setup refuses the task, naming
#: the step count and its cost, unless ``ode_steps`` is set that high by hand
MAX_RAISED_STEPS = 512
#: training-ODE integrators: adaptive Dormand–Prince 5(4) (the authors', the default) or
#: the fixed-step RK4 of the evaluation ODEs (the previous training path)
INTEGRATORS = ("dopri5", "rk4")
#: ρ0 draws and power iterations of the stiffness estimate
STIFFNESS_POINTS, STIFFNESS_ITERS = 256, 30
#: fresh draws of the self-consistency check at every output time (3 trajectories each)
CHECK_POINTS = 256


def _has_data_minibatches(task: Any) -> bool:
    """Whether ``task``'s potential is estimated on data minibatches (never raises)."""
    try:
        return task.data_batch(1, np.random.default_rng(0)) is not None
    except Exception:  # noqa: BLE001  (skip never raises: no data, or no batch of 1)
        return False


def drift_stiffness(task: Any, rng: np.random.Generator,
                    n_points: int = STIFFNESS_POINTS, n_iter: int = STIFFNESS_ITERS) -> float:
    """Largest |eigenvalue| of ∇²Φ over ``n_points`` ρ0 draws (power iteration).

    Hessian-vector products are central differences of ``task.grad_potential``
    (float64), so any task with a gradient works; the estimate is a lower bound
    of the true maximum (ρ0's support only; exact for a quadratic Φ).
    """
    x = np.asarray(task.sample_initial(n_points, rng), dtype=np.float64)
    v = rng.standard_normal(x.shape)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    eps = 1e-4 * (1.0 + np.abs(x).max())
    lam = np.zeros(n_points)
    for _ in range(n_iter):
        hv = (task.grad_potential(x + eps * v) - task.grad_potential(x - eps * v)) / (2 * eps)
        lam = np.abs(np.einsum("nd,nd->n", v, hv))
        norm = np.linalg.norm(hv, axis=1, keepdims=True)
        v = np.where(norm > 0, hv / np.where(norm > 0, norm, 1.0), v)
    return float(lam.max())



# ------------------------------------------------------------------------------ loss
def ibp_loss(params: Params, x: torch.Tensor, times: torch.Tensor, drift: torch.Tensor,
             beta: float, probes: torch.Tensor | None = None) -> torch.Tensor:
    """Integration-by-parts velocity-matching loss at frozen points.

    mean over (times, batch) of |v|² − 2(v·b + β⁻¹ div v), with b = −∇Φ: equal
    to E|v − v*|² up to a θ-free constant, v* = b − β⁻¹∇log ρ_t (because
    E_ρ[v·∇log ρ] = −E_ρ[div v]); needs neither the score nor the density.

    Parameters
    ----------
    x : Tensor (T, B, D)
        Frozen samples of the current flow at ``times (T,)``.
    drift : Tensor (T, B, D)
        b = −∇Φ at ``x``.
    probes : Tensor (T, B, P, D), optional
        Hutchinson probes; exact divergence when None.
    """
    feats = time_features(params, times)
    v, div = velocity(params, x, feats, probes=probes, exact_div=probes is None)
    return ((v * v).sum(-1) - 2.0 * ((v * drift).sum(-1) + div / beta)).mean()


def cosine_factor(i: int, n: int, final: float) -> float:
    """Learning-rate factor at iteration ``i`` of ``n``: cosine from 1 down to ``final``."""
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * i / max(1, n)))


# ---------------------------------------------------------------------------- solver
class Scvm(Solver):
    name = "scvm"
    version = "1"
    parameters = {
        "iters": [1000], "batch_size": [256], "n_times": [10], "width": [64], "rank": [20],
        "lr": [3e-3], "lr_final": [1e-3], "ode_steps": [32], "dtype": ["float32"],
        "hutchinson": [0], "data_batch_size": [512], "n_samples": [4096],
        "integrator": ["dopri5"], "ode_tol": [1e-4],
    }
    capabilities = frozenset({SAMPLES, LOG_DENSITY, GPU})
    labels = {"iters": "it", "width": "w", "batch_size": "batch", "n_times": "K",
              "ode_steps": "steps/t"}
    description = ("self-consistent velocity matching (Li et al. 2023): a time-dependent "
                   "velocity field trained on its own flow; ODE densities")

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "lr", "lr_final")
        if params["lr_final"] > 1:
            raise ValueError(f"solver 'scvm': lr_final is a fraction of lr in (0, 1], "
                             f"got {params['lr_final']!r}")
        for key, low in (("iters", 1), ("batch_size", 1), ("n_times", 1), ("width", 2),
                         ("rank", 1), ("ode_steps", 1), ("n_samples", 1), ("hutchinson", 0),
                         ("data_batch_size", 0)):
            value = params[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or value < low:
                raise ValueError(f"solver 'scvm': {key} must be an integer >= {low}, "
                                 f"got {value!r}")
        if params["integrator"] not in INTEGRATORS:
            raise ValueError(f"solver 'scvm': integrator must be one of {INTEGRATORS}, "
                             f"got {params['integrator']!r}")
        tol = params["ode_tol"]
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) \
                or not 0 < tol < 1:
            raise ValueError(f"solver 'scvm': ode_tol must be a number in (0, 1), "
                             f"got {tol!r}")
        if params["dtype"] not in DTYPES:
            raise ValueError(f"solver 'scvm': dtype must be one of {sorted(DTYPES)}, "
                             f"got {params['dtype']!r}")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, ("scvm learns one flow of the Fokker-Planck equation; it does not "
                          "assimilate observations")
        if _has_data_minibatches(task) and self.params["ode_steps"] < DATA_TASK_MIN_ODE_STEPS:
            return True, (f"a data posterior is stiff for a fixed-step ODE: ode_steps="
                          f"{self.params['ode_steps']} diverged on bayesian_logreg/synthetic; "
                          f"use ode_steps >= {DATA_TASK_MIN_ODE_STEPS} (more on larger data "
                          "sets, see the module doc)")
        return False, ""

    # setup -------------------------------------------------------------------------
    def setup(self, task, times, seed, context):
        p = self.params
        self.task, self.times = task, sorted(float(t) for t in times)
        self.horizon = self.times[-1]
        if self.horizon <= 0:
            raise ValueError(f"solver 'scvm': needs a positive evaluation time, got {times}")
        self.device, self.dtype = context.device, DTYPES[p["dtype"]]
        self.progress = context.progress
        # a fifth child (stiffness estimate) and a sixth (self-consistency check) leave the
        # first four streams unchanged
        train_seed, init_seed, probe_seed, result_seed, stiff_seed, check_seed = seed.spawn(6)
        self.check_rng = np.random.default_rng(check_seed)
        self.rng = np.random.default_rng(train_seed)
        self.result_rng = np.random.default_rng(result_seed)
        init_gen = torch.Generator().manual_seed(int(init_seed.generate_state(1)[0]))
        self.probe_gen = torch.Generator(device=self.device).manual_seed(
            int(probe_seed.generate_state(1)[0]))
        self.params0 = init_velocity_net(task.dim, int(p["width"]), int(p["rank"]), init_gen,
                                         self.dtype, self.device)
        # a data posterior's stiffness is handled by skip (its minibatch gradients make a
        # finite-difference estimate noisy); other tasks get a step their stiffness allows
        self.stiffness = (float("nan") if _has_data_minibatches(task)
                          else drift_stiffness(task, np.random.default_rng(stiff_seed)))
        self.steps_per_unit = int(p["ode_steps"])
        self.ode_stats = OdeStats()
        if math.isfinite(self.stiffness):
            needed = math.ceil(self.stiffness / RK4_STEP_LAMBDA)
            if needed > max(self.steps_per_unit, MAX_RAISED_STEPS):
                # fail in seconds rather than train and evaluate for hours (module doc)
                raise ValueError(
                    f"scvm: the drift's stiffness λ ≈ {self.stiffness:.4g} (largest |eig ∇²Φ| "
                    f"at ρ0 draws) needs {needed} RK4 steps per unit time, above the "
                    f"{MAX_RAISED_STEPS} it raises to by itself; a draw or log-density of n "
                    f"points to time t costs n·ceil(t·{needed})·4 network evaluations. Set "
                    f"ode_steps >= {needed} to run it anyway")
            self.steps_per_unit = max(self.steps_per_unit, needed)

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype, device=self.device)

    def _drift_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """b = −∇Φ on a tensor, with a fresh data minibatch per call for data tasks."""
        size = int(self.params["data_batch_size"])
        task = self.task
        probe = task.data_batch(size, self.rng) if size > 0 else None
        if probe is None:
            return lambda y: -task.grad_potential_torch(y)
        return lambda y: -task.grad_potential_torch(y, task.data_batch(size, self.rng))

    # run ----------------------------------------------------------------------------
    def training_state(self) -> tuple[Params, torch.optim.Optimizer]:
        """Fresh trainable copies of the initial weights and their Adam optimiser."""
        params = {k: v.detach().clone().requires_grad_(True) for k, v in self.params0.items()}
        # foreach: one dispatch per step for all 34 tensors, the single-tensor arithmetic
        optimizer = torch.optim.Adam(list(params.values()), lr=float(self.params["lr"]),
                                     betas=ADAM_BETAS, foreach=True)
        return params, optimizer

    def train_iteration(self, params: Params, optimizer: torch.optim.Optimizer,
                        drift_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """One outer iteration (module docstring): fresh times and x0, the frozen ODE,
        one Adam step on the IBP loss. Returns the loss (the step already taken)."""
        p = self.params
        batch, n_times = int(p["batch_size"]), int(p["n_times"])
        n_probes, dim = int(p["hutchinson"]), self.task.dim
        # stratified times shared by the batch, t = 0 included (the authors' sampler)
        strata = (np.arange(n_times) + self.rng.random(n_times)) * self.horizon / n_times
        times = self._tensor(np.concatenate([[0.0], strata]))
        x0 = self._tensor(self.task.sample_initial(batch, self.rng))
        if p["integrator"] == "dopri5":
            tol = float(p["ode_tol"])
            # the first attempt: the step proposed after the previous iteration's first
            # accepted one (the field changes little between Adam steps), the authors'
            # 0.01 at the first iteration
            first = self.ode_stats.first_step or DP_FIRST_STEP
            x = dopri5_path(network_field(params), x0, times[1:], rtol=tol, atol=tol,
                            first_step=first, stats=self.ode_stats)
        else:
            x = trajectory_at(params, x0, times[1:], float(self.steps_per_unit))
        x = torch.cat([x0[None], x])
        with torch.no_grad():
            drift = drift_fn(x.reshape(-1, dim)).reshape(x.shape)
        probes = None
        if n_probes:
            probes = torch.randn(*x.shape[:2], n_probes, dim, generator=self.probe_gen,
                                 dtype=self.dtype, device=self.device)
        optimizer.zero_grad(set_to_none=True)
        loss = ibp_loss(params, x, times, drift, float(self.task.beta), probes)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def run(self):
        p = self.params
        iters = int(p["iters"])
        lr, lr_final = float(p["lr"]), float(p["lr_final"])
        drift_fn = self._drift_fn()
        params, optimizer = self.training_state()
        n_probes = int(p["hutchinson"])
        losses = np.empty(iters)
        start = time.perf_counter()
        for i in range(iters):
            optimizer.param_groups[0]["lr"] = lr * cosine_factor(i, iters, lr_final)
            loss = self.train_iteration(params, optimizer, drift_fn)
            losses[i] = float(loss)
            if not math.isfinite(losses[i]):
                raise FloatingPointError(
                    f"scvm: loss is {losses[i]} at iteration {i}; a flow that blows up "
                    f"usually means too large a rate (lr) or, with integrator='rk4', RK4 "
                    f"steps too long for the task's stiffness (raise ode_steps, now "
                    f"{self.steps_per_unit} per unit time)")
            if i % 10 == 0 or i == iters - 1:
                self.progress(i + 1, iters, f"SCVM iteration {i + 1}/{iters} "
                                            f"loss {losses[i]:.4g}")
        self.net = {k: v.detach() for k, v in params.items()}
        tail = losses[-max(1, iters // 20):]
        info = {"iters": iters, "train_seconds": time.perf_counter() - start,
                "final_loss": float(tail.mean()),
                "loss_curve": losses[:: max(1, iters // 100)].tolist(),
                "ode": self._ode_description(iters),
                "stiffness": self.stiffness,
                "divergence": "exact" if n_probes == 0 else f"hutchinson({n_probes})"}
        return {t: self._result(t, info) for t in self.times}

    def _ode_description(self, iters: int) -> str:
        """The training and evaluation ODEs, with the adaptive solver's mean work."""
        evaluation = f"rk4, {self.steps_per_unit} steps per unit time"
        if self.params["integrator"] == "rk4":
            return evaluation
        stats = self.ode_stats
        return (f"training dopri5 (rtol = atol = {float(self.params['ode_tol']):g}; "
                f"{stats.accepted / iters:.1f} accepted and {stats.rejected / iters:.1f} "
                f"rejected steps per iteration); evaluation {evaluation}")

    # results -------------------------------------------------------------------------
    def velocity_at(self, t: float, x: np.ndarray) -> np.ndarray:
        """The learned v_θ(t, x) at points ``x (n, D)`` (after :meth:`run`); float64 numpy."""
        with torch.no_grad():
            feats = time_features(self.net, torch.full((1,), float(t), dtype=self.dtype,
                                                       device=self.device))
            v, _ = velocity(self.net, self._tensor(np.asarray(x, dtype=np.float64))[None], feats)
        return v[0].cpu().double().numpy()

    def _chunk_rows(self) -> int:
        """Rows per evaluation chunk: the (rows, D, width) tangents stay ~16 MB."""
        width = int(self.params["width"])
        return int(np.clip(CHUNK_ELEMENTS // (self.task.dim * width), 256, 16384))

    def push(self, x0: np.ndarray, t: float, log0: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray | None]:
        """Flow ``x0 (n, D)`` from 0 to ``t``; with ``log0 (n,)``, the log-densities there.

        The change −∫₀ᵗ div v ds is accumulated from 0 in the network's dtype and
        added to ``log0`` in float64 (so float32 rounding is relative to the
        change, not to log ρ0).
        """
        if log0 is None:
            return self._integrate(x0, 0.0, t, None)
        x, change = self._integrate(x0, 0.0, t, np.zeros(np.shape(x0)[0]))
        return x, np.asarray(log0, dtype=np.float64) + change

    def pull(self, y: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Flow ``y (m, D)`` back from ``t`` to 0: (x0, ∫₀ᵗ div v_θ(s, x_s) ds along the path).

        Integrating dℓ/ds = −div v from s = t (ℓ = 0) down to s = 0 leaves
        ℓ(0) = ∫₀ᵗ div v ds, so log ρ_t(y) = log ρ0(x0) − ℓ(0).
        """
        return self._integrate(y, t, 0.0, np.zeros(np.shape(y)[0]))

    def _integrate(self, x: np.ndarray, t_from: float, t_to: float,
                   logp: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Chunked :func:`rk4_path` on numpy arrays (float64 in and out)."""
        n_steps = steps_for(t_to - t_from, float(self.steps_per_unit))
        x = np.asarray(x, dtype=np.float64)
        out = np.empty_like(x)
        out_l = None if logp is None else np.empty(x.shape[0])
        rows = self._chunk_rows()
        for s in range(0, x.shape[0], rows):
            xc = self._tensor(x[s:s + rows])
            lc = None if logp is None else self._tensor(logp[s:s + rows])
            xc, lc = rk4_path(self.net, xc, t_from, t_to, n_steps, lc)
            out[s:s + rows] = xc.cpu().double().numpy()
            if out_l is not None:
                out_l[s:s + rows] = lc.cpu().double().numpy()
        return out, out_l

    def self_consistency(self, t: float, n: int = CHECK_POINTS) -> dict[str, float]:
        """Relative self-consistency residuals of the learned flow at time ``t``.

        The flow solves the equation iff v_θ = b − β⁻¹∇log ρ^θ_t on ρ^θ_t, and
        then (ρ0 given) the returned law is exact. At ``n`` fresh draws x ~ ρ^θ_t
        and random unit directions e, the residuals
        (:func:`solvers.base.self_consistency_residual`) compare e·v_θ with
        e·b − β⁻¹∂_e log ρ^θ_t, ∂_e by central differences (step 1e-4) of the
        solver's own log-density on a float64 copy of the network (rounding
        ~1e-10, truncation ~1e-8). Costs 3n trajectories to t (one forward, two
        backward with the divergence): 3 × 256 against the SymKL metric's
        2 × 8192.
        """
        params = {k: v.double() for k, v in self.net.items()}
        steps = steps_for(t, float(self.steps_per_unit))
        as64 = lambda a: torch.as_tensor(a, dtype=torch.float64, device=self.device)  # noqa: E731
        x, _ = rk4_path(params, as64(self.task.sample_initial(n, self.check_rng)), 0.0, t, steps)
        e = as64(random_directions(n, self.task.dim, self.check_rng))
        h = 1e-4

        def log_rho(y: torch.Tensor) -> np.ndarray:
            zero = torch.zeros(n, dtype=torch.float64, device=self.device)
            back, change = rk4_path(params, y, t, 0.0, steps, zero)
            return self.task.log_density_initial(back.cpu().numpy()) - change.cpu().numpy()

        score_e = (log_rho(x + h * e) - log_rho(x - h * e)) / (2 * h)
        with torch.no_grad():
            feats = time_features(params, as64([t]))
            v = velocity(params, x[None], feats)[0][0]
            b = -self.task.grad_potential_torch(x)
        return self_consistency_residual((v * e).sum(1).cpu().numpy(),
                                         (b * e).sum(1).cpu().numpy(), score_e,
                                         float(self.task.beta))

    def _result(self, t: float, info: dict) -> SolverResult:
        task = self.task

        def draw(n: int, rng: np.random.Generator):
            x0 = task.sample_initial(n, rng)
            return self.push(x0, t, task.log_density_initial(x0))

        def log_density(y: np.ndarray) -> np.ndarray:
            y = np.atleast_2d(np.asarray(y, dtype=np.float64))
            x0, div_integral = self.pull(y, t)
            return task.log_density_initial(x0) - div_integral

        samples, _ = self.push(task.sample_initial(int(self.params["n_samples"]),
                                                   self.result_rng), t)
        diagnostics = {"ibp_loss": info["final_loss"],
                       "ode_steps_per_unit": float(self.steps_per_unit)}
        diagnostics.update(self.self_consistency(t))
        return SolverResult(samples=samples, log_density=log_density, draw=draw,
                            info=dict(info, diagnostics=diagnostics), law=IID_DENSITY)
