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

Network (the authors' "VNN"; ``width`` where they use 256)
---------------------------------------------------------
time embedding: 64 sinusoidal features of t → Dense 64 → CELU → Dense 64;
trunk: concat[x, emb(t)] → 3 × [Dense w → LayerNorm → SiLU] → Dense D;
skip: emb(t) → 3 × [Dense w → SiLU] → Dense (2r + 1)·D = [U, V, c], adding
Uᵀ(Vx) + c (rank ≤ r = ``rank``, 20). Weights N(0, 1/fan_in), biases zero,
float32. The skip can represent an OU velocity −A(x − b) + β⁻¹S_t⁻¹(x − m_t)
exactly (D ≤ r); the trunk carries what is not affine (mixtures). Everything
that depends on t only is evaluated once per time and broadcast over the batch.

Divergence
----------
``hutchinson = 0`` (default; always for densities): the exact trace, by
forward-mode differentiation written into the forward pass. The D unit
vectors enter as tangent rows through the x columns of the first layer and
are pushed through each Dense (one GEMM over points × rows), LayerNorm
((dh − n(n·dh)/width)·γ/σ, the mean over the units removed inside the GEMM by
centred weights) and SiLU (σ(h)(1 + h(1 − σ(h)))); only the diagonal of the
head's Jacobian is formed and the skip adds tr(UᵀV).
This is the quantity the authors get from D forward/backward passes, here in
one pass of plain tensor operations, so the loss is differentiated by
ordinary autograd (no double backward).
``hutchinson = P > 0`` (training only): (1/P) Σ_p ε_pᵀ J ε_p with fresh
N(0, I) probes per point, unbiased, variance 2‖(J + Jᵀ)/2‖_F² / P per point,
cost P tangent rows instead of D. Its noise adds to the IBP loss's own
(below) where J is large, and J is large where Φ is stiff: on OU D = 12
(task seed 101, λ_max(A) ≈ 40; lr 1e-2 and Adam β2 0.999, 1000 iterations),
P = 1 with a 4× larger batch at about the same cost gave SymKL 0.90 / 2.03 at
t = 0.5 / 0.9 against 0.43 / 0.55 with the exact trace. Meant for large D.

ODE and densities
-----------------
Training (``integrator = "dopri5"``, the default since #36): :func:`dopri5_path`,
Dormand–Prince 5(4) with FSAL (six network evaluations a step), local
extrapolation, the embedded fourth-order weights of Hairer's DOPRI5 (diffrax
uses Dormand and Prince's other fourth-order row: the same order, error
estimates of the same size), and diffrax's integral step control as the authors call it
(safety 0.9, growth ≤ 10 after an accepted step, shrink to [0.2, 0.9]× after
a rejected one, error = RMS over a point's coordinates of the error scaled by
atol + rtol·max(|y0|, |y1|)); the training times are read off the
fourth-order continuous extension, so no step is shortened to hit them (as
diffrax's ``SaveAt(ts=...)``). The batch shares one step, accepted when the
*worst* point's error is below one: every trajectory meets the tolerance as
in the authors' per-trajectory (vmapped) solve, whose loop also runs as many
iterations as its slowest trajectory, and each stage is one batched network
evaluation. The first attempt is the step the controller proposed after the
previous iteration's first step (the authors start every solve at 0.01 and
grow ≤ 10× a step: 2–3 extra steps an iteration); 4096 attempts raise
:class:`FloatingPointError`. Stiffness needs no rule here: the controller
finds hλ ≲ 3.3 by itself (tests/test_scvm.py: λ = 300, 97 steps per unit time
and 23 rejections); the stiffness rule below still sets the evaluation's
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

Speed (issue #36; one iteration at batch 256, K = 10, width 64, one thread)
--------------------------------------------------------------------------
Profiled first (torch.profiler): at D = 2 the no-grad ODE was 44 % of an
iteration (≈ 160 RK4 stage evaluations of ~40 small operations each: the
LayerNorm written out elementwise), the loss's backward 43 %, dominated by
the broadcast products over the (points, rows, width) tangents and their
backward; at D = 10 most of the rest was fresh-memory page faults of those
7 MB tangent temporaries (the same iteration took 124 instead of 204 ms with
glibc's mmap threshold raised, as a run process has it). Changes, all with
the same values (float64: 1e-12; tests/test_scvm.py keeps the previous code
as the reference): the ODE's evaluations use the fused LayerNorm and SiLU
kernels (:func:`_velocity_only`, 12 operations); LayerNorm's mean removal is
folded into centred weights (:func:`_centred`), n·dh needs no centring, the
tangent rows are held row-major (P, T, B, width) so per-point factors
broadcast over the leading axis, the last layer's scale is applied after
contracting the rows with the head (one big product fewer), and Adam runs
``foreach`` over the 34 tensors (the same arithmetic). Measured, old → new,
on a loaded 2-core machine (load 1.8): D = 2 85 → 51 ms, D = 10 204 → 108 ms;
150 iterations on OU D = 2 / 4 leave samples within 1.4e-6 and log-densities
within 5e-5 (float32) of the previous code.
Against the authors' JAX code (tests/benchmarks/bench_authors_jax.py: same
network, batch, times and loss; two worker processes on one core, stepped
alternately, medians of each process's CPU time; 2026-12-04, load 0.9, the
fixed-step RK4 training ODE then): 1.07× at D = 2 (57.8 ms theirs, 54.3 ms
ours), 1.56× at D = 10 (137.8 / 88.1 ms). What was left: our RK4 took ≈ 160
sequential network evaluations per iteration whatever the field (≈ 40 % of
the iteration at D = 2), where their Dopri5 takes as many as the field needs;
the loss's tangent products were ≈ 45 %.

Round 2 (#36; measured by the benchmark, which now steps a third worker, the
previous RK4 path, in the same rotation):

- training ODE by adaptive Dopri5 (above), the authors' integrator and
  tolerance, made the default. Near the initial weights of the benchmark
  problem it takes 1–2 steps an iteration at D = 2 and ≈ 4.5 (and 0.4
  rejected) at D = 10, i.e. 6–30 network evaluations instead of ≈ 160; the
  first attempt carried over from the previous iteration took D = 2 from 3.2
  to 1.1 steps and D = 10 from 5.5 to 4.5 (+ 0.4 rejected; 30 iterations each, one loaded core:
  D = 2 26 → 21 ms an iteration, D = 10 unchanged at 64.5 ms: fewer steps,
  more rejections). During training the steps follow the flow's stiffness:
  accepted steps per iteration over 300 iterations on OU, 1.5 at D = 2 (task
  seed 100), 3.2 at D = 4 (seed 101), 9.5 at D = 4 (seed 100, λ_max(A) =
  32.5), 5.0 at D = 10 (seed 100), with 0.03–0.16 rejected.
- the exact divergence's LayerNorm/SiLU/tangent update as one autograd node
  with a hand-written backward (:class:`_NormActTangents`; equal to the
  autograd path to 1e-15 relative in float64, tests/test_scvm.py). A first
  version was *slower* than autograd (22.3 against 19.8 ms at D = 2, 67.7
  against 55.5 at D = 10): ``einsum("pn,pnw->nw")`` became a batched GEMM per
  point; written as products and sums it matched autograd, and with the
  fused LayerNorm statistics and in-place activation derivatives it is
  6.4 % faster at D = 2 (19.8 against 21.1 ms, loss forward and backward,
  interleaved in one process, 40 repetitions) and 5.5 % at D = 10 (60.9
  against 64.4 ms). The rest of the loss is GEMMs (≈ 25–35 %: compute-bound
  tangent products, (D·N × 64) × (64 × 64) forward and backward) and
  broadcast products over the (D, N, 64) tangents that autograd already
  evaluates about as cheaply as a hand-written chain. Kept for the 5–6 %; the
  autograd path stays (``velocity(..., fused=False)``, and Hutchinson probes).

Measured 2026-12-05 with jax 0.10.2 / jaxlib 0.10.2, diffrax 0.7.2, flax
0.12.8, optax 0.2.8 (their ``jax.experimental.host_callback`` import stubbed:
it is gone from jax ≥ 0.4.35 and is a debugging print off this path), two
runs back to back, machine load 3.1–3.2: authors 44.3 / 44.7 ms, ours 21.6 /
21.8 ms, 2.05× / 2.05× at D = 2; authors 237.7 / 239.2 ms, ours 63.2 /
64.6 ms, 3.76× / 3.70× at D = 10; the previous RK4 path in the same runs
49.3 / 49.4 ms (authors / previous 0.90×) and 84.3 / 85.1 ms (2.82×). This jax
runs their iteration faster at D = 2 and much slower at D = 10 than the one
of 2026-12-04, so the same day with jax 0.4.30 / jaxlib 0.4.30, diffrax 0.6.0,
flax 0.8.5, optax 0.2.2 (a second environment; the previous path then
reproduces 2026-12-04's 1.07× / 1.56× to within 0.01–0.15), two runs, load
3.9–4.5: authors 52.1 / 54.7 ms, ours 21.0 / 22.6 ms, 2.49× / 2.42× at D = 2;
authors 127.6 / 188.4 ms, ours 60.0 / 85.6 ms, 2.13× / 2.20× at D = 10; the
previous path 1.07× / 1.02× and 1.57× / 1.71×. With jax 0.10.2 the D = 2
ratio sits at the target: a third run (load 4.1–4.2, with SBTM's in the same
session) gave 1.93× (wall time 2.05×; 3.67× at D = 10), and 1.89× under load
5.5–6.1 (another job of ours on the second core, before the in-place
activation derivatives); with jax 0.4.30 the margin is smallest at D = 10.
What is left is the loss (≈ 75–80 % of our iteration at D = 2, more at D = 10;
a CPU-fused Adam would save 0.26 ms of ≈ 21, not taken: different rounding).

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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from solvers.base import (GPU, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          random_directions, require_positive, self_consistency_residual)

Params = dict[str, torch.Tensor]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: size of the sinusoidal time features and of the time embedding (the authors' 64)
TIME_EMB = 64
#: hidden layers of the trunk and of the skip connection's network (the authors' 3)
DEPTH = 3
#: Adam's (β1, β2): the authors' runs set b2 = 0.9 (optax's default is 0.999)
ADAM_BETAS = (0.9, 0.9)
#: LayerNorm epsilon (flax's default, as the authors' network)
LN_EPS = 1e-6
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


# --------------------------------------------------------------------------- network
def init_velocity_net(dim: int, width: int, rank: int, generator: torch.Generator,
                      dtype: torch.dtype = torch.float32, device: str = "cpu") -> Params:
    """Random parameters of the velocity network (the authors' "VNN").

    Parameters
    ----------
    dim : int
        State dimension D.
    width : int
        Hidden width of the trunk and of the skip connection's network.
    rank : int
        Rank bound of the time-dependent linear skip connection.
    generator : torch.Generator
        Source of the initial weights (CPU generator; no global state is read).
    dtype, device
        Where the parameters live.

    Returns
    -------
    dict of str to Tensor
        ``emb{0,1}.{w,b}`` (time embedding), ``h{0..2}.{w,b}`` and ``ln{0..2}.{g,b}``
        (trunk; ``h0.w`` is ``(width, D + 64)``, its first D columns act on x),
        ``out.{w,b}`` (trunk head), ``s{0..2}.{w,b}`` and ``sout.{w,b}`` (skip
        network, ``sout`` has ``(2·rank + 1)·D`` outputs). Weights are
        N(0, 1/fan_in) (flax's lecun_normal, untruncated), biases zero,
        LayerNorm scale one, as the authors' initialisation.
    """
    shapes: dict[str, tuple[int, int]] = {
        "emb0": (TIME_EMB, TIME_EMB), "emb1": (TIME_EMB, TIME_EMB),
        "h0": (width, dim + TIME_EMB), "h1": (width, width), "h2": (width, width),
        "out": (dim, width),
        "s0": (width, TIME_EMB), "s1": (width, width), "s2": (width, width),
        "sout": ((2 * rank + 1) * dim, width),
    }
    params: Params = {}
    for name, (rows, cols) in shapes.items():
        weight = torch.randn(rows, cols, generator=generator, dtype=torch.float64)
        params[f"{name}.w"] = weight / math.sqrt(cols)
        params[f"{name}.b"] = torch.zeros(rows, dtype=torch.float64)
    for k in range(DEPTH):
        params[f"ln{k}.g"] = torch.ones(width, dtype=torch.float64)
        params[f"ln{k}.b"] = torch.zeros(width, dtype=torch.float64)
    return {k: v.to(device=device, dtype=dtype).requires_grad_(True) for k, v in params.items()}


def _dense(params: Params, name: str, x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, params[f"{name}.w"], params[f"{name}.b"])


def sinusoidal(t: torch.Tensor, size: int = TIME_EMB) -> torch.Tensor:
    """Transformer-style features of times ``t (T,)`` -> ``(T, size)``.

    Frequencies 10000^(−k/(size/2 − 1)), k = 0..size/2 − 1, sines then cosines
    (the authors' ``SinusoidalEmbedding``).
    """
    half = size // 2
    freq = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device)
                     * (-math.log(10000.0) / (half - 1)))
    arg = t[:, None] * freq
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


@dataclass
class TimeFeatures:
    """Everything of the velocity that depends on time only, for ``T`` times.

    Attributes
    ----------
    shift : Tensor (T, width)
        The time embedding's contribution to the first trunk layer, its bias included.
    skip : Tensor (T, D, D)
        The skip connection's matrix M(t) = Uᵀ V (rank ≤ ``rank``).
    skip_bias : Tensor (T, D)
        Its bias.
    """

    shift: torch.Tensor
    skip: torch.Tensor
    skip_bias: torch.Tensor

    def at(self, index: int | slice) -> TimeFeatures:
        """The features of a subset of the times (a slice keeps the time axis)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return TimeFeatures(self.shift[index], self.skip[index], self.skip_bias[index])


def time_features(params: Params, t: torch.Tensor) -> TimeFeatures:
    """Evaluate the time-only parts of the network at times ``t (T,)``.

    The time embedding is sinusoidal features → Dense 64 → CELU → Dense 64; the
    skip network maps it through 3 × [Dense width → SiLU] → Dense (2r + 1)·D,
    split into U, V (r × D) and a bias. Computed once per time and broadcast
    over the batch (all points of a batch share their times).
    """
    dim = params["out.w"].shape[0]
    rank = (params["sout.w"].shape[0] // dim - 1) // 2
    emb = _dense(params, "emb1", torch.nn.functional.celu(
        _dense(params, "emb0", sinusoidal(t.to(params["emb0.w"].dtype)))))
    shift = emb @ params["h0.w"][:, dim:].T + params["h0.b"]
    hidden = emb
    for k in range(DEPTH):
        hidden = torch.nn.functional.silu(_dense(params, f"s{k}", hidden))
    out = _dense(params, "sout", hidden)
    n = t.shape[0]
    u = out[:, :rank * dim].reshape(n, rank, dim)
    v = out[:, rank * dim:2 * rank * dim].reshape(n, rank, dim)
    return TimeFeatures(shift, u.transpose(1, 2) @ v, out[:, 2 * rank * dim:])


def velocity(params: Params, x: torch.Tensor, feats: TimeFeatures,
             probes: torch.Tensor | None = None, exact_div: bool = False, fused: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """v_θ(t, x) and optionally its divergence, for points ``x (T, B, D)`` at T times.

    The trunk is concat[x, emb(t)] → 3 × [Dense → LayerNorm → SiLU] → Dense D;
    the skip adds M(t)x + c(t). Without a divergence the fused LayerNorm and
    SiLU kernels do it in a dozen operations (:func:`_velocity_only`). The
    divergence is computed in the same pass by forward-mode differentiation
    written out layer by layer (:func:`_velocity_and_divergence`). Plain tensor
    operations either way, so the loss is differentiated by ordinary autograd
    (no double backward).

    Parameters
    ----------
    params : dict
        Network parameters (:func:`init_velocity_net`).
    x : Tensor (T, B, D)
        Points; row ``i`` of axis 0 is at the time of ``feats`` row ``i``.
    feats : TimeFeatures
        :func:`time_features` at the T times.
    probes : Tensor (P, D) or (T, B, P, D), optional
        Hutchinson probes: the divergence estimate is (1/P) Σ_p e_pᵀ J e_p.
    exact_div : bool
        Exact divergence tr J (tangents = the D unit vectors, diagonal only).
    fused : bool
        With ``exact_div``: the layers' normalisation, activation and tangent update
        as :class:`_NormActTangents` nodes with a hand-written backward (default);
        False: the same values by plain autograd operations (the reference path).

    Returns
    -------
    v : Tensor (T, B, D)
    div : Tensor (T, B) or None
        None unless ``probes`` is given or ``exact_div``.
    """
    if probes is None and not exact_div:
        return _velocity_only(params, x, feats), None
    if probes is None and fused:
        return _velocity_and_exact_divergence(params, x, feats)
    return _velocity_and_divergence(params, x, feats, probes)


def _skip_and_head(params: Params, h: torch.Tensor, x: torch.Tensor, feats: TimeFeatures
                   ) -> torch.Tensor:
    """Dense head of the trunk plus the skip M(t)x + c(t): ``(T, B, D)``."""
    head = torch.nn.functional.linear(h, params["out.w"], params["out.b"])
    return torch.baddbmm(head + feats.skip_bias[:, None, :], x, feats.skip.transpose(1, 2))


def _velocity_only(params: Params, x: torch.Tensor, feats: TimeFeatures) -> torch.Tensor:
    """v_θ at ``x (T, B, D)`` with the fused LayerNorm / SiLU kernels (no tangents).

    The ODE's hundreds of evaluations per training iteration are this call on
    (1, B, D); each elementwise step of a hand-written LayerNorm was a separate
    pass and a separate dispatch (module docstring: 40 → 12 operations).
    """
    dim = x.shape[-1]
    width = params["h0.w"].shape[0]
    h = torch.baddbmm(feats.shift[:, None, :], x, params["h0.w"][:, :dim].T.expand(
        x.shape[0], dim, width))
    for k in range(DEPTH):
        if k > 0:
            h = _dense(params, f"h{k}", h)
        h = torch.nn.functional.silu(torch.nn.functional.layer_norm(
            h, (width,), params[f"ln{k}.g"], params[f"ln{k}.b"], LN_EPS))
    return _skip_and_head(params, h, x, feats)


def _centred(weight: torch.Tensor, bias: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A Dense layer whose outputs have their mean over the units removed.

    LayerNorm subtracts the mean over units from the pre-activation and from
    its tangents; subtracting the mean row of the weight (and the mean bias)
    does it inside the GEMM instead of in a pass over (points × rows × width).
    """
    return (weight - weight.mean(0, keepdim=True),
            None if bias is None else bias - bias.mean())


def _velocity_and_divergence(params: Params, x: torch.Tensor, feats: TimeFeatures,
                             probes: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """v_θ and its divergence by tangents pushed through the layers.

    Tangent rows e_p (the D unit vectors, or probes) are held row-major
    ``(P, T, B, width)`` so that every per-point factor broadcasts over the
    leading axis. Through a layer, with u = centred pre-activation (the
    centring folded into the weights, :func:`_centred`), n = u/σ and
    y = γ ⊙ n + β, the tangent is

        du → (du − n (n·du)/width) ⊙ γ σ⁻¹ silu'(y),

    since n·1 = 0 makes the mean-removal of (n·du) redundant. For the unit
    vectors the first layer's tangents are the columns of W0 shared by all
    points, so n·du is one GEMM there. Only the diagonal of the head's
    Jacobian is formed (exact), or the probes' quadratic forms (Hutchinson).
    """
    dim = x.shape[-1]
    w0, _ = _centred(params["h0.w"][:, :dim])
    h_bias = feats.shift - feats.shift.mean(-1, keepdim=True)
    u = torch.baddbmm(h_bias[:, None, :], x, w0.T.expand(x.shape[0], dim, w0.shape[0]))
    if probes is None:
        rows = None
        tangent = w0.T[:, None, None, :]                    # (D, 1, 1, width), shared
    else:
        rows = probes.movedim(-2, 0) if probes.dim() == 4 else probes[:, None, None, :]
        tangent = rows @ w0.T                               # (P, T|1, B|1, width)
    for k in range(DEPTH):
        if k > 0:
            weight, bias = _centred(params[f"h{k}.w"], params[f"h{k}.b"])
            u = torch.nn.functional.linear(h, weight, bias)
            tangent = tangent @ weight.T
        width = u.shape[-1]
        inv_std = torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + LN_EPS)
        normed = u * inv_std
        gamma = params[f"ln{k}.g"]
        y = torch.addcmul(params[f"ln{k}.b"], normed, gamma)
        sig = torch.sigmoid(y)
        # γ σ⁻¹ silu'(y), one (T, B, width) factor for all tangent rows
        scale = (inv_std * gamma) * sig * (1.0 + y * (1.0 - sig))
        if tangent.shape[1] == tangent.shape[2] == 1:       # rows shared by all points
            along = (normed @ tangent[:, 0, 0, :].T).movedim(-1, 0)   # (P, T, B)
        else:
            along = (tangent * normed).sum(-1)
        pre = torch.addcmul(tangent, normed, along.unsqueeze(-1), value=-1.0 / width)
        h = y * sig
        if k + 1 == DEPTH and rows is None:
            break
        tangent = pre * scale
    v = _skip_and_head(params, h, x, feats)
    if rows is None:
        # Σ_d (J e_d)_d: only the diagonal of the head's output is needed, contracted over
        # the rows before the last layer's scale (one (P, T, B, width) product fewer)
        on_diag = (pre * params["out.w"][:, None, None, :]).sum(0)
        div = (on_diag * scale).sum(-1)
        return v, div + feats.skip.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None]
    jac_rows = tangent @ params["out.w"].T                  # (P, T, B, D): J e_p (trunk)
    skip_rows = torch.einsum("tij,ptbj->ptbi", feats.skip,
                             rows.expand(rows.shape[0], *x.shape[:2], dim))
    return v, ((jac_rows + skip_rows) * rows).sum(-1).mean(0)


class _NormActTangents(torch.autograd.Function):
    """One LayerNorm → SiLU layer with its tangent rows, and a hand-written backward.

    Forward, for a centred pre-activation ``u (N, W)`` (the mean removal folded
    into the weights, :func:`_centred`) and tangent rows ``T (P, N, W)`` or
    ``(P, 1, W)`` (shared by all points): s = (mean u² + ε)^(−1/2), n = u s,
    y = γ ⊙ n + β, h = silu(y), c = s γ silu'(y), a_p = n·T_p / W,
    pre_p = T_p − a_p n, and either the next rows pre_p ⊙ c (``head`` None) or,
    for the last layer, the trunk's divergence Σ_w c ⊙ Σ_p head_p ⊙ pre_p with
    ``head`` the output weights (P = D rows, the unit vectors).

    Backward by the chain rule written out over the same tensors: every
    gradient over the (P, N, W) rows is one or two passes (autograd's
    elementwise graph takes about twice as many, each broadcast product's
    backward a product and a reduction); the (N, W) primal terms are small.
    Checked against autograd in float64 (tests/test_scvm.py).
    """

    @staticmethod
    def forward(ctx, u, rows, gamma, beta, head):
        width = u.shape[-1]
        # the fused kernel's mean removal is a no-op on the centred u (rounding only)
        normed, _, inv_std = torch.native_layer_norm(u, (width,), None, None, LN_EPS)
        y = torch.addcmul(beta, normed, gamma)
        sig = torch.sigmoid(y)
        slope = torch.rsub(sig, 1.0).mul_(y).add_(1.0).mul_(sig)   # silu'(y)
        scale = (inv_std * gamma).mul_(slope)
        if rows.shape[1] == 1:                                   # shared rows: one GEMM
            along = (normed @ rows[:, 0, :].T).T
        else:
            along = (rows * normed).sum(-1)
        along = along / width
        pre = torch.addcmul(rows, normed, along.unsqueeze(-1), value=-1.0)
        ctx.save_for_backward(u, rows, gamma, head, inv_std, normed, y, sig, slope, scale,
                              along, pre)
        h = y * sig
        if head is None:
            return h, pre.mul(scale)
        on_diag = (pre * head[:, None, :]).sum(0)               # (N, W)
        ctx.on_diag = on_diag
        return h, (on_diag * scale).sum(-1)

    @staticmethod
    def backward(ctx, grad_h, grad_out):
        (u, rows, gamma, head, inv_std, normed, y, sig, slope, scale, along,
         pre) = ctx.saved_tensors
        width = u.shape[-1]
        if head is None:
            grad_pre = grad_out * scale
            grad_scale = (grad_out * pre).sum(0)
            grad_head = None
        else:
            grad_on_diag = grad_out.unsqueeze(-1) * scale        # (N, W)
            grad_scale = grad_out.unsqueeze(-1) * ctx.on_diag
            grad_pre = grad_on_diag * head[:, None, :]
            grad_head = (pre * grad_on_diag).sum(1)
        # pre = T − n a, a = n·T / W
        grad_along = (grad_pre * normed).sum(-1)                 # −∂/∂a, (P, N)
        grad_rows = torch.addcmul(grad_pre, normed, grad_along.unsqueeze(-1),
                                  value=-1.0 / width)
        # ∂/∂n of −Σ_p a_p (pre_p·G_p) with a_p = n·T_p / W: two products summed over p
        # (written as products and a sum: einsum made this a batched GEMM per point)
        terms = grad_pre * along.unsqueeze(-1)
        if rows.shape[1] == 1:
            grad_normed = torch.addmm(terms.sum(0), grad_along.T, rows[:, 0, :],
                                      alpha=1.0 / width).neg_()
            grad_rows = grad_rows.sum(1, keepdim=True)
        else:
            grad_normed = terms.addcmul_(rows, grad_along.unsqueeze(-1),
                                         value=1.0 / width).sum(0).neg_()
        # primal: h = silu(y), scale = s γ silu'(y), y = γ n + β, n = u s
        curvature = torch.mul(sig, -2.0).add_(1.0).mul_(y).add_(2.0).mul_(sig).mul_(
            torch.rsub(sig, 1.0))                                    # silu''(y)
        grad_y = torch.addcmul(grad_h * slope, grad_scale * (inv_std * gamma), curvature)
        scale_term = (grad_scale * slope).mul_(inv_std)          # ∂/∂γ of scale's term
        grad_gamma = (grad_y * normed).add_(scale_term).sum(0)
        grad_beta = grad_y.sum(0)
        grad_normed.addcmul_(grad_y, gamma)
        # ∂/∂s: scale_term·γ/s summed over units, plus n = u s
        grad_inv = (torch.addcmul(grad_normed * u, scale_term, gamma / inv_std)
                    ).sum(-1, keepdim=True)
        grad_u = torch.addcmul(grad_normed * inv_std, u, grad_inv * inv_std.pow(3),
                               value=-1.0 / width)
        return grad_u, grad_rows, grad_gamma, grad_beta, grad_head


def _velocity_and_exact_divergence(params: Params, x: torch.Tensor, feats: TimeFeatures
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """v_θ and its exact divergence through :class:`_NormActTangents` (the default path).

    The same quantities as :func:`_velocity_and_divergence` without probes (equal
    to rounding), the points flattened to (N = T·B, ·) and each layer's
    normalisation, activation and tangent update one autograd node with a
    hand-written backward; the Dense layers stay ordinary autograd GEMMs.
    """
    dim = x.shape[-1]
    w0, _ = _centred(params["h0.w"][:, :dim])
    h_bias = feats.shift - feats.shift.mean(-1, keepdim=True)
    u = torch.baddbmm(h_bias[:, None, :], x, w0.T.expand(x.shape[0], dim, w0.shape[0]))
    lead = u.shape[:-1]
    u = u.reshape(-1, u.shape[-1])
    rows = w0.T[:, None, :]                                    # (D, 1, width), shared
    div = None
    for k in range(DEPTH):
        if k > 0:
            weight, bias = _centred(params[f"h{k}.w"], params[f"h{k}.b"])
            u = torch.nn.functional.linear(h, weight, bias)
            rows = rows @ weight.T
        head = params["out.w"] if k + 1 == DEPTH else None
        h, out = _NormActTangents.apply(u, rows, params[f"ln{k}.g"], params[f"ln{k}.b"], head)
        if head is None:
            rows = out
        else:
            div = out.reshape(lead)
    v = _skip_and_head(params, h.reshape(*lead, -1), x, feats)
    return v, div + feats.skip.diagonal(dim1=-2, dim2=-1).sum(-1)[:, None]


# ------------------------------------------------------------------------ integration
def rk4_path(params: Params, x: torch.Tensor, t_from: float, t_to: float, n_steps: int,
             logp: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Classical RK4 with ``n_steps`` equal steps from ``t_from`` to ``t_to`` (either order).

    Integrates dx/dt = v_θ(t, x) for ``x (B, D)`` and, when ``logp (B,)`` is
    given, the instantaneous change of variables dℓ/dt = −div v_θ(t, x) with
    the exact divergence. A step from t_to back to t_from with the same grid
    (``t_to < t_from`` gives negative steps) inverts it to O(h⁴). No gradient.
    """
    if n_steps == 0:
        return x, logp
    dtype = params["h0.w"].dtype
    h = (t_to - t_from) / n_steps
    track = logp is not None

    def field(k: int, y: torch.Tensor):
        v, div = velocity(params, y[None], feats.at(k), exact_div=track)
        return v[0], (-div[0] if track else None)

    with torch.no_grad():
        # every stage time of the path in one time-feature pass: t_k, t_k + h/2, t_k + h
        nodes = t_from + 0.5 * h * torch.arange(2 * n_steps + 1, dtype=torch.float64)
        feats = time_features(params, nodes.to(device=x.device, dtype=dtype))
        for step in range(n_steps):
            k = 2 * step
            k1, l1 = field(k, x)
            k2, l2 = field(k + 1, torch.add(x, k1, alpha=0.5 * h))
            k3, l3 = field(k + 1, torch.add(x, k2, alpha=0.5 * h))
            k4, l4 = field(k + 2, torch.add(x, k3, alpha=h))
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if track:
                logp = logp + (h / 6.0) * (l1 + 2.0 * l2 + 2.0 * l3 + l4)
    return x, logp


def steps_for(span: float, steps_per_unit: float) -> int:
    """Number of equal RK4 steps over a time span: ceil(span × steps per unit time)."""
    return math.ceil(abs(span) * steps_per_unit - 1e-9)


def trajectory_at(params: Params, x0: torch.Tensor, times: torch.Tensor,
                  steps_per_unit: float) -> torch.Tensor:
    """Positions at increasing ``times (K,)`` (starting at 0) of the flow from ``x0 (B, D)``.

    Each interval between consecutive times gets ceil(Δt × steps_per_unit)
    RK4 steps (so no step is longer than 1/steps_per_unit and every output
    time is hit exactly, as an adaptive solver with output times would).
    Returns ``(K, B, D)``; no gradient (the stop-gradient of the method).
    """
    out = []
    x, last = x0, 0.0
    for t in times.tolist():
        x, _ = rk4_path(params, x, last, t, steps_for(t - last, steps_per_unit))
        out.append(x)
        last = t
    return torch.stack(out)


# ------------------------------------------------------------- adaptive Dormand–Prince
#: Dormand–Prince 5(4): stage nodes c_2..c_7 and the rows of the lower-triangular matrix
DP_NODES = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
DP_MATRIX = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
#: the fifth-order weights minus the embedded fourth-order ones (k_1..k_7): the local
#: error estimate (the last row of DP_MATRIX is the fifth-order solution, FSAL)
DP_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)
#: the fourth-order continuous extension (Hairer, Nørsett & Wanner, II.6; ``contd5``)
DP_DENSE = (-12715105075 / 11282082432, 0.0, 87487479700 / 32700410799,
            -10690763975 / 1880347072, 701980252875 / 199316789632,
            -1453857185 / 822651844, 69997945 / 29380423)
#: step-size control of diffrax's PIDController as the authors call it (plain integral
#: control): h ← h·clip(0.9·err^(−1/5), 1, 10) after an accepted step, clip(…, 0.2, 0.9)
#: after a rejected one, err the RMS over a point's coordinates of the error scaled by
#: atol + rtol·max(|y0|, |y1|); the authors' first step 0.01
DP_SAFETY, DP_GROW, DP_SHRINK, DP_FIRST_STEP = 0.9, 10.0, 0.2, 0.01
#: step attempts per ODE solve before it is declared failed (diffrax's max_steps)
DP_MAX_STEPS = 4096

#: a field for :func:`dopri5_path`: given the stage times of a step (S,), a function of
#: (stage index, state (B, D)) returning the velocity; one call per step attempt, so
#: that the time-only work of the network is done once for all stages of a step
StageField = Callable[[torch.Tensor], Callable[[int, torch.Tensor], torch.Tensor]]


@dataclass
class OdeStats:
    """Work of adaptive solves: accepted and rejected steps (six evaluations each), and
    the step the controller proposed after the first accepted step of the last solve
    (the next solve's first attempt, see :meth:`Scvm.train_iteration`)."""

    accepted: int = 0
    rejected: int = 0
    first_step: float | None = None


def _combine(y: torch.Tensor, h: float, coefs: tuple[float, ...], ks: list[torch.Tensor]
             ) -> torch.Tensor:
    """y + h Σ_i c_i k_i over the non-zero coefficients (in place on a fresh tensor)."""
    out = y.clone()
    for c, k in zip(coefs, ks):
        if c != 0.0:
            out.add_(k, alpha=h * c)
    return out


def dopri5_path(field: StageField, x0: torch.Tensor, times: torch.Tensor,
                rtol: float = 1e-4, atol: float = 1e-4, first_step: float = DP_FIRST_STEP,
                max_steps: int = DP_MAX_STEPS, stats: OdeStats | None = None
                ) -> torch.Tensor:
    """Positions at increasing ``times (K,)`` ≥ 0 of dx/dt = f(t, x) from ``x0 (B, D)`` at 0.

    Dormand–Prince 5(4) with the first-same-as-last stage (six evaluations per
    step), local extrapolation (the fifth-order solution is carried) and
    standard step-size control (``DP_SAFETY`` etc.): a step is accepted when
    the largest over the points of the RMS scaled error is below one, so every
    trajectory meets the tolerance as in the authors' per-trajectory (vmapped)
    solve, while the whole batch shares a step and each stage is one batched
    network evaluation. Output times inside a step are read off the
    fourth-order continuous extension (no step is shortened to hit them, as
    diffrax's ``SaveAt(ts=...)``). No gradient.

    Parameters
    ----------
    field : StageField
        The velocity (see :data:`StageField`).
    x0 : Tensor (B, D)
        Starting points at t = 0.
    times : Tensor (K,)
        Non-decreasing output times, ≥ 0.
    rtol, atol : float
        Tolerances (the authors': 1e-4 both).
    first_step : float
        Length of the first attempted step.
    max_steps : int
        Step attempts allowed; more raise :class:`FloatingPointError`.
    stats : OdeStats, optional
        Accepted and rejected steps are added to it.

    Returns
    -------
    Tensor (K, B, D)
    """
    out_times = [float(t) for t in times.tolist()]
    out: list[torch.Tensor] = []
    nodes = torch.tensor(DP_NODES, dtype=torch.float64)
    t, y, h = 0.0, x0, float(first_step)
    end = out_times[-1] if out_times else 0.0
    stats = OdeStats() if stats is None else stats
    with torch.no_grad():
        while out_times and out_times[0] <= t:           # outputs at the start
            out.append(x0.clone())
            out_times.pop(0)
        k1 = None
        attempts, accepted_before = 0, stats.accepted
        while out_times:
            attempts += 1
            if attempts > max_steps:
                raise FloatingPointError(
                    f"dopri5: {max_steps} step attempts did not reach t = {end:g} (at "
                    f"t = {t:.4g}, step {h:.3g}): the flow is too stiff or blows up")
            h = min(h, end - t)
            stage_times = torch.cat([torch.tensor([t], dtype=torch.float64),
                                     t + h * nodes[:5]]).to(dtype=x0.dtype, device=x0.device)
            f = field(stage_times)
            if k1 is None:
                k1 = f(0, y)
            ks = [k1]
            for i, row in enumerate(DP_MATRIX[:5]):
                ks.append(f(i + 1, _combine(y, h, row, ks)))
            y_new = _combine(y, h, DP_MATRIX[5], ks)
            ks.append(f(5, y_new))                          # k7 at t + h: FSAL
            err = _combine(torch.zeros_like(y), h, DP_ERROR, ks)
            scale = torch.maximum(y.abs(), y_new.abs()).mul_(rtol).add_(atol)
            ratio = float(err.div_(scale).pow_(2).mean(-1).max().sqrt())
            if not math.isfinite(ratio):
                stats.rejected += 1
                h *= DP_SHRINK
                continue
            factor = DP_SAFETY * max(ratio, 1e-10) ** -0.2
            if ratio >= 1.0:
                stats.rejected += 1
                h *= min(max(factor, DP_SHRINK), DP_SAFETY)
                continue
            stats.accepted += 1
            t_next = end if h == end - t else t + h
            while out_times and out_times[0] <= t_next:
                out.append(_dense_output(y, y_new, ks, h, (out_times.pop(0) - t) / h))
            t, y, k1 = t_next, y_new, ks[-1]
            h *= min(max(factor, 1.0), DP_GROW)
            if stats.accepted == accepted_before + 1:
                stats.first_step = h
    return torch.stack(out)


def _dense_output(y0: torch.Tensor, y1: torch.Tensor, ks: list[torch.Tensor], h: float,
                  theta: float) -> torch.Tensor:
    """Dormand–Prince's continuous extension at y(t + θh), θ ∈ [0, 1] (fourth order).

    y(θ) = y0 + θ(Δ + (1 − θ)(a + θ(b + (1 − θ)c))) with Δ = y1 − y0,
    a = h k1 − Δ, b = Δ − h k7 − a, c = h Σ d_i k_i (:data:`DP_DENSE`):
    matches y0, y1, k1 and k7 at the ends.
    """
    if theta >= 1.0:
        return y1.clone()
    delta = y1 - y0
    a = h * ks[0] - delta
    b = delta - h * ks[6] - a
    c = _combine(torch.zeros_like(y0), h, DP_DENSE, ks)
    return y0 + theta * (delta + (1 - theta) * (a + theta * (b + (1 - theta) * c)))


def network_field(params: Params) -> StageField:
    """The velocity network as a :data:`StageField` (time features once per step)."""
    def prepare(stage_times: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        feats = time_features(params, stage_times)
        return lambda i, y: _velocity_only(params, y[None], feats.at(i))[0]
    return prepare


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
