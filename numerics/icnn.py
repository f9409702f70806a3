"""DenseICNN kernels: the network, its closed-form gradient and Hessian, maps and inversions.

Shared by the solvers that use the gradient of an input-convex network as a
transport map (:mod:`solvers.icnn_jko`, :mod:`solvers.vwgf`); moved here from
solvers/icnn_jko.py unchanged (same operations in the same order: the
solvers' outputs are bit-identical, checked on OU, filtering and porous-medium
runs of both before and after the move).

Network (DenseICNN, two hidden layers of width w, rank-r quadratic blocks)::

    z1 = Σ_r (xᵀQ1_r)² + W1 x + b1                 (no activation, convex)
    u  = Z z1 + Σ_r (xᵀQ2_r)² + W2 x + b2,  z2 = softplus(u)
    ψ  = cᵀ z2 + ½ε‖x‖²

with Z ≥ 0 and c ≥ 0 kept non-negative by *clamping* after every optimiser
step (as the original of Mokrov et al. 2021). Every pre-activation is a quadratic,
u_j = ½xᵀK_j x + B_jᵀx + a_j with K_j = 2(Σ_i Z_ji Σ_r Q1_ri Q1_riᵀ + Σ_r Q2_rj Q2_rjᵀ) ⪰ 0, so

    ∇u_j = K_j x + B_j                          (all units: ONE GEMM),
    ∇ψ   = Σ_j c_j σ(u_j) ∇u_j + εx,
    ∇²ψ  = Σ_j c_j σ'(u_j) ∇u_j∇u_jᵀ + Σ_j c_j σ(u_j) K_j + εI      (PSD by construction),

computed for a whole batch in a few GEMMs plus one batched product; the
Gram term Σ_j c_j σ'(u_j) ∇u_j∇u_jᵀ is built in row blocks of about
``GRAM_BLOCK`` elements of the (rows, D, w) Jacobian so that each block stays
in cache (:class:`LinearGram`; timed in tests/benchmarks/bench_icnn_jko.py).
log det through a batched Cholesky with a jitter fallback for numerically
non-PD matrices, its gradient supplied as H⁻¹ from the same factor.

Training path (round 4, issue 36): the JKO loss takes ∇ψ and log det ∇²ψ from
one autograd Function (:class:`GradLogDet`, :func:`icnn_grad_logdet`) with a
hand-written backward; the Hessian is not returned. K is built full, (D*D, w)
(:func:`full_quadratic_form`: no index maps, the Jacobian table is a view of
it), and the contractions with it that do not need every entry read its P upper
rows (:func:`_upper_entries`). Loss and parameter gradients equal the round-3
path (tests/benchmarks/icnn_baseline.py, round3_*) to ~1e-15 in float64.
Measured one thread, interleaved with round 3 (bench_icnn_jko.py,
``test_training_iteration_against_round3``), 2-core machine shared with other
jobs at a load of 5.0-5.2: a training iteration is 1.24x at D = 12, w = 64
(14.3 -> 11.6 ms); 1.26x at D = 2, w = 256; 1.16x at D = 16, w = 256; 1.23x at
D = 32, w = 256; 1.32x at D = 64, w = 64 (batch 1024 throughout).

- Made of, measured step by step at D = 12, w = 64 (cumulative factor over round
  3, load 2.4-2.5): the (n, D²)->(n, P) index gathers and their index_put
  backward go: 1.075x; the fused Adam (``solvers.icnn_jko.jko_optimizer``): 1.13x;
  one Function instead of the autograd graph: 1.15x; ∂/∂(Σ_j v_j K_j) = G + ∂∇ψ ⊗ x
  by ``addcmul`` in place rather than ``baddbmm`` of (D, 1) x (1, D) (0.47 -> 0.09
  ms): 1.22x; keeping the forward's (n, D, w) Jacobian for the backward instead of
  rebuilding it (up to ``KEEP_JACOBIAN`` elements): 1.23x; H⁻¹ by a triangular
  solve (:func:`_inverse_from_cholesky`) and the pre-activations on K's P upper
  rows: 1.25x (load 4.0-4.4); the Cholesky factor as Uᵀ (``via_upper`` of
  ``_cholesky_with_jitter``: 0.29 against 0.42 ms) and Σ_j v_j K_j unpacked
  straight into the Hessian's buffer (one (n, D, D) copy fewer): a further
  1.01-1.05x (load 6.3-6.4, at the edge of what that load resolves). Σ_j v_j K_j on the P upper rows too (index_select
  unpacking, the symmetrised gradient packed back): 1.01x at D = 12, 0.99x at
  D = 2, 1.07x at D = 16, w = 256 — kept, since with it the fused path beats the
  packed autograd path (icnn_grad_hess + logdet_pd, which the loss took above
  D = 16 before) at every D measured: 1.11x at D = 24 and 1.14x at D = 32
  (w = 256), 1.32x at D = 64 (w = 64); without it, 0.98x at D = 24 and 32.
- Tried and not kept: other Gram blocks (2^16 ... 2^20 elements: within the
  noise at D = 12 and D = 2); one stacked [K; B] operand so that each GEMM pair
  (u, Σ v K with v Bᵀ, their backward) is one GEMM (1.234x against 1.231x);
  Σ_r Q_rj Q_rjᵀ by bmm (0.38 -> 1.41 ms forward and backward); the quadratic
  form as a Function with a hand-written backward (0.397 -> 0.390 ms); H⁻¹ by
  cholesky_solve of I (1.3 ms at D = 12), inv_ex (1.6 ms), a batched column
  loop (1.9 ms), doubling of triangular diagonal blocks (1.9 ms) against
  ``cholesky_inverse`` 0.89 and the triangular solve 0.64 ms;
  torch.linalg.vecdot and einsum for Σ_d M_dj J_dj (equal / 7x slower than
  mul + sum).
- What is left at D = 12 (≈ 8.5 ms at a load of 2.5): the Gram products forward
  and backward ≈ 3.7 ms (batched 12 x 64 x 12 GEMMs at ≈ 25 GFLOP/s — a single
  (nD x w) x (w x D) GEMM of the same size is no faster — and four element-wise
  passes over (n, D, w)), Cholesky 0.3 ms and H⁻¹ 0.65 ms (one LAPACK call per
  12 x 12 matrix), the (n, P) and (n, D²) GEMMs ≈ 1 ms, the quadratic form
  0.4 ms; ≈ 1 ms outside the Function (the loss's other terms, Adam, autograd).

Maps, inversions and training helpers built on these kernels live in
:mod:`numerics.icnn_maps`.

This module imports nothing of gfbench (numerics is the bottom layer): the
solvers pass a task's callables in (:func:`identity_pretrain_sampler`,
:func:`pulled_back_log_density`).
"""
from __future__ import annotations

import math

import torch

Params = dict[str, torch.Tensor]
#: names of the parameters kept non-negative (convexity)
NONNEG = ("Z", "c")


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


def _cholesky_with_jitter(hess: torch.Tensor, max_tries: int = 4, via_upper: bool = False
                          ) -> tuple[torch.Tensor, int]:
    """Cholesky factors L of SPD ``(n, D, D)``; non-PD ones (in floating point) get jitter.

    ``via_upper`` factors as Uᵀ U and returns L = Uᵀ, a row-major view: LAPACK
    then works on the row-major batch as it is (H symmetric), without the
    transposing copies (1024 matrices, one thread: 0.29 against 0.42 ms at
    D = 12, 3.6 against 3.8 ms at D = 32; the fused training path uses it).
    """
    def factor(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if via_upper:
            upper, info = torch.linalg.cholesky_ex(mat, upper=True)
            return upper.mT, info
        return torch.linalg.cholesky_ex(mat)

    chol, info = factor(hess)
    bad = info > 0
    n_fixed = int(bad.sum())
    if n_fixed:
        dim = hess.shape[-1]
        eye = torch.eye(dim, dtype=hess.dtype, device=hess.device)
        scale = hess.diagonal(dim1=-2, dim2=-1).mean(-1).abs() + 1e-12
        jitter, fixed = torch.finfo(hess.dtype).eps * 100.0, hess
        for _ in range(max_tries):
            fixed = fixed + (bad * scale * jitter)[:, None, None] * eye
            chol, info = factor(fixed)
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


# ------------------------------------------------- training path: ∇ψ and log det ∇²ψ fused
#: the fused Function keeps the (n, D, w) Jacobian of the forward pass for the backward
#: pass up to this many elements (float32: 16 MiB) instead of rebuilding it
KEEP_JACOBIAN = 2 ** 22
#: from this D on, H⁻¹ in the fused backward comes from a triangular solve (see
#: ``_inverse_from_cholesky``), below it from ``cholesky_inverse``
TRIANGULAR_INVERSE_MIN_DIM = 8


def full_quadratic_form(params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`packed_quadratic_form` but ``K (D*D, w)``: every entry (d, e), row d*D + e.

    The full layout needs no index maps: K's rows are the entries the Hessian
    and ∇u_j = K_j x + B_j use (``K.view(D, D*w)`` is the Jacobian table as it
    is), Σ_r Q_rj Q_rjᵀ is one broadcast product, and the pre-activations
    contract with ½ x ⊗ x.
    """
    dim, width = params["W1"].shape[1], params["b1"].shape[0]
    q1 = params["Q1"].view(dim, -1, width)
    q2 = params["Q2"].view(dim, -1, width)
    s1 = (q1[:, None] * q1[None, :]).sum(2).view(dim * dim, width)
    s2 = (q2[:, None] * q2[None, :]).sum(2).view(dim * dim, width)
    curv = 2.0 * torch.addmm(s2, s1, params["Z"].T)
    lin = (params["Z"] @ params["W1"] + params["W2"]).T
    const = params["Z"] @ params["b1"] + params["b2"]
    return curv, lin, const


_UPPER: dict[tuple, tuple[torch.Tensor, ...]] = {}


def _upper_entries(dim: int, device: torch.device, dtype: torch.dtype
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor]:
    """``rows, cols (P,)`` of d <= e, their rows ``d*D + e`` of a (D*D, w) K, and the ½ on d = e.

    Cached per (D, device, dtype): the pre-activations contract K's P upper
    entries only, u = a + Σ_{d<=e} (1 or ½) x_d x_e K_de + xB (a GEMM with P
    instead of D² columns, its backward an index_add into the upper rows; the
    x_d x_e by ``index_select``, 5x faster than ``x[:, rows]``). Measured at
    D = 12: 0.34 against 0.51 ms for the full contraction, forward and backward.
    """
    key = (dim, str(device), dtype)
    if key not in _UPPER:
        rows, cols = torch.triu_indices(dim, dim, device=device)
        half = torch.where(rows == cols, 0.5, 1.0).to(dtype)
        pos = torch.empty(dim, dim, dtype=torch.long, device=device)
        pos[rows, cols] = torch.arange(rows.shape[0], device=device)
        pos[cols, rows] = pos[rows, cols]
        _UPPER[key] = (rows, cols, rows * dim + cols, half, pos.reshape(-1))
    return _UPPER[key]


def _inverse_from_cholesky(chol: torch.Tensor) -> torch.Tensor:
    """H⁻¹ ``(n, D, D)``, row-major, from the Cholesky factors L of H.

    For D >= ``TRIANGULAR_INVERSE_MIN_DIM``: X = L⁻ᵀ by one batched triangular
    solve X Lᵀ = I, then H⁻¹ = X Xᵀ (measured 1024 matrices, one thread: 0.64
    against 0.89 ms for ``cholesky_inverse`` at D = 12, 0.80 against 1.38 at
    D = 16, 0.39 against 0.49 at D = 8; slower below: 0.59 against 0.34 at D = 6).
    Otherwise ``cholesky_inverse``.
    """
    dim = chol.shape[-1]
    if dim >= TRIANGULAR_INVERSE_MIN_DIM:
        eye = torch.eye(dim, dtype=chol.dtype, device=chol.device).expand_as(chol)
        inv_t = torch.linalg.solve_triangular(chol.mT, eye, upper=True, left=False)
        return inv_t @ inv_t.mT
    inv = torch.cholesky_inverse(chol)
    return inv if inv.is_contiguous() else inv.mT   # symmetric: the transpose is row-major


class GradLogDet(torch.autograd.Function):
    """(∇ψ(x) ``(n, D)``, log det ∇²ψ(x) ``(n,)``) from K, B, a, c, with a hand-written backward.

    Inputs ``curv (D*D, w)``, ``lin (D, w)``, ``const (w,)`` (:func:`full_quadratic_form`),
    ``c (w,)``, ``x (n, D)`` (constant), ``eps``, ``rows`` (Gram block) — and a third,
    non-differentiable output: the number of jittered Cholesky factors.

    Forward: u = a + ½(x⊗x)K + xB, s = σ(u), v = c s, ∇ψ = (vKᵀ) x + vBᵀ + εx,
    H = vKᵀ + εI + Σ_j c_j s_j(1−s_j) J_j J_jᵀ (J = [x, 1][K; Bᵀ] by row blocks),
    log det H by Cholesky; u and vKᵀ contract K's P upper rows only
    (:func:`_upper_entries`; vKᵀ is unpacked by ``index_select``). Backward, with
    G = ḡ H⁻¹ (:func:`_inverse_from_cholesky` of the saved factor; symmetric, so
    the Gram's S = G + Gᵀ is 2G): per block M = G J, ∂/∂w_j = Σ_d M_dj J_dj,
    ∂/∂[K; Bᵀ] = 2[x, 1]ᵀ(M diag w); then ∂/∂(vKᵀ) = G + ∂∇ψ ⊗ x (one addcmul, in
    place on G), symmetrised and packed to the P upper entries, ∂/∂v and ∂/∂K by
    GEMMs (the upper rows' share by one index_add), and the chain through σ by
    a few element-wise products. Gradients reach K's upper rows only through u
    and vKᵀ, which is exact for the symmetric K of :func:`full_quadratic_form`
    (its backward symmetrises). No autograd
    graph is recorded inside; only first derivatives.
    """

    @staticmethod
    def forward(ctx, curv, lin, const, c, x, eps, rows):
        n, dim = x.shape
        width = c.shape[0]
        rows_, cols_, upper, half, full = _upper_entries(dim, x.device, x.dtype)
        xx = torch.index_select(x, 1, rows_).mul_(torch.index_select(x, 1, cols_)).mul_(half)
        packed = curv.index_select(0, upper)                     # (P, w)
        u = torch.addmm(const, xx, packed).addmm_(x, lin)
        s = torch.sigmoid(u)
        v = s * c
        hess = torch.index_select(v @ packed.T, 1, full).view(n, dim, dim)   # Σ_j v_j K_j
        grad = torch.addmm(torch.bmm(hess, x[:, :, None]).view(n, dim), v, lin.T)
        grad.add_(x, alpha=eps)
        table = torch.cat([curv.view(dim, dim * width), lin.reshape(1, dim * width)], 0)
        xt = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
        dsig = s * (1.0 - s)
        weight = dsig * c
        hess.diagonal(dim1=1, dim2=2).add_(eps)
        ctx.jacs = []
        keep = n * dim * width <= KEEP_JACOBIAN
        for start in range(0, n, rows):
            jac = _jacobian_block(xt, table, start, rows, width)
            if keep:
                ctx.jacs.append(jac)
            hess[start:start + rows].baddbmm_(jac * weight[start:start + rows, None, :],
                                              jac.transpose(1, 2))
        chol, n_fixed = _cholesky_with_jitter(hess, via_upper=True)
        logdet = 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)
        ctx.save_for_backward(packed, lin, c, x, xx, xt, table, s, dsig, chol)
        ctx.rows = rows
        fixed = torch.tensor(n_fixed)
        ctx.mark_non_differentiable(fixed)
        return grad, logdet, fixed

    @staticmethod
    def backward(ctx, g_grad, g_logdet, _):
        packed, lin, c, x, xx, xt, table, s, dsig, chol = ctx.saved_tensors
        n, dim = x.shape
        width, rows = c.shape[0], ctx.rows
        weight = dsig * c
        g_hess = _inverse_from_cholesky(chol).mul_(g_logdet[:, None, None])
        d_table = torch.zeros_like(table)
        d_weight = torch.empty_like(weight)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            jac = (ctx.jacs[start // rows] if ctx.jacs
                   else _jacobian_block(xt, table, start, rows, width))
            m = torch.bmm(g_hess[start:stop], jac)
            torch.sum(m * jac, 1, out=d_weight[start:stop])
            m *= weight[start:stop, None, :]
            d_table.addmm_(xt[start:stop].T, m.view(stop - start, -1), alpha=2.0)
        ctx.jacs = []
        _, _, upper, half, _ = _upper_entries(dim, x.device, x.dtype)
        g_inner = g_hess.addcmul_(g_grad[:, :, None], x[:, None, :])
        # Σ_j v_j K_j reads the P upper entries of K only: entry (d, e) gets the sum of
        # the gradients of (d, e) and (e, d) (½ twice on the diagonal)
        g_packed = torch.index_select((g_inner + g_inner.mT).view(n, dim * dim), 1, upper)
        g_packed *= half
        v = s * c
        d_v = torch.addmm(g_grad @ lin, g_packed, packed)
        d_packed = g_packed.T @ v
        d_lin = d_table[dim].view(dim, width).addmm(g_grad.T, v)
        d_s = d_v * c + d_weight * c * (1.0 - 2.0 * s)
        d_c = (d_v * s + d_weight * dsig).sum(0)
        d_u = d_s * dsig
        d_packed.addmm_(xx.T, d_u)
        d_curv = d_table[:dim].view(dim * dim, width).index_add_(0, upper, d_packed)
        d_lin.addmm_(x.T, d_u)
        return d_curv, d_lin, d_u.sum(0), d_c, None, None, None


def icnn_grad_logdet(params: Params, x: torch.Tensor, eps: float
                     ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """∇ψ and log det ∇²ψ at a batch, for training, through one :class:`GradLogDet`.

    The same numbers as :func:`icnn_grad_hess` followed by :func:`logdet_pd`
    (loss and parameter gradients to ~1e-15 in float64: tests/test_icnn_jko.py);
    the Hessian itself is not returned. Used by the JKO loss
    (:func:`solvers.icnn_jko.jko_loss`) at every D.

    Parameters
    ----------
    params : Params
        The network (:func:`init_icnn`); gradients flow to every parameter.
    x : Tensor (n, D)
        The batch, a constant: no gradient flows to it (the loss keeps the
        autograd path for an ``x`` that requires one).
    eps : float
        The strong-convexity term ½ε‖x‖² of ψ.

    Returns
    -------
    grad : Tensor (n, D)
        ∇ψ(x).
    logdet : Tensor (n,)
        log det ∇²ψ(x) by Cholesky (non-PD factors in floating point jittered).
    n_fixed : int
        How many factors needed the jitter.
    """
    curv, lin, const = full_quadratic_form(params)
    rows = gram_rows(x.shape[0], x.shape[1], const.shape[0])
    grad, logdet, fixed = GradLogDet.apply(curv, lin, const, params["c"], x, eps, rows)
    return grad, logdet, int(fixed)


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
