"""SCVM's time-conditioned velocity network, its exact divergence, and its RK4 paths.

The network of :mod:`solvers.scvm` (Li, Hurault & Solomon 2023; the authors' "VNN"),
split from that module unchanged (same operations in the same order): the solver
trains it and reads laws off its flow; this module evaluates it.

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
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from numerics.dopri5 import StageField

Params = dict[str, torch.Tensor]
#: size of the sinusoidal time features and of the time embedding (the authors' 64)
TIME_EMB = 64
#: hidden layers of the trunk and of the skip connection's network (the authors' 3)
DEPTH = 3
#: LayerNorm epsilon (flax's default, as the authors' network)
LN_EPS = 1e-6


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

def network_field(params: Params) -> StageField:
    """The velocity network as a :data:`StageField` (time features once per step)."""
    def prepare(stage_times: torch.Tensor) -> Callable[[int, torch.Tensor], torch.Tensor]:
        feats = time_features(params, stage_times)
        return lambda i, y: _velocity_only(params, y[None], feats.at(i))[0]
    return prepare
