"""The previous ICNN-JKO hot paths, kept as the benchmarks' baseline.

These are ``quadratic_form``, ``icnn_grad_hess``, ``invert_map``, ``pull_back``
and ``push_trajectory`` of ``solvers/icnn_jko.py`` as of commit 17347ac
(before the performance work of issue 18), unchanged (ψ itself, which did
not change, is the solver's):
broadcast products over (n, D, w) for the pre-activations and ∇ψ, autograd
through the Gram term, Newton with an Armijo search on ψ over all rows in
float64, chunk outputs joined from lists. bench_icnn_jko.py times them side
by side with the current code and checks both give the same numbers.
"""
from __future__ import annotations


import torch

from numerics.icnn import (Params, _cholesky_with_jitter, icnn_potential, logdet_pd)
from numerics.icnn_maps import (ObsLogLik, _obs_weight)

#: rows per chunk then
OLD_CHUNK = 4096

def quadratic_form(params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pre-activation is quadratic in x: u_j(x) = ½xᵀK_j x + B_jᵀx + a_j.

    Returns ``K (w, D, D)`` (symmetric, PSD since Z ≥ 0), ``B (D, w)`` and ``a (w,)``;
    parameter-only work, differentiable.
    """
    dim, width = params["W1"].shape[1], params["b1"].shape[0]
    q1 = params["Q1"].view(dim, -1, width)
    q2 = params["Q2"].view(dim, -1, width)
    s1 = torch.einsum("drj,erj->jde", q1, q1).reshape(width, dim * dim)
    s2 = torch.einsum("drj,erj->jde", q2, q2).reshape(width, dim * dim)
    curv = 2.0 * (params["Z"] @ s1 + s2).view(width, dim, dim)
    lin = (params["Z"] @ params["W1"] + params["W2"]).T
    const = params["Z"] @ params["b1"] + params["b2"]
    return curv, lin, const


def icnn_grad_hess(params: Params, x: torch.Tensor, eps: float, hessian: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Closed-form ∇ψ ``(n, D)`` and ∇²ψ ``(n, D, D)`` (None unless ``hessian``).

    With u_j = ½xᵀK_j x + B_jᵀx + a_j (:func:`quadratic_form`), ∇u_j = K_j x + B_j
    for all units at once is ONE GEMM, and
    ∇ψ = Σ_j c_jσ(u_j)∇u_j + εx,  ∇²ψ = Σ_j c_jσ'(u_j)∇u_j∇u_jᵀ + Σ_j c_jσ(u_j)K_j + εI.
    Differentiable with respect to the parameters (autograd through the GEMMs).
    """
    n, dim = x.shape
    curv, lin, const = quadratic_form(params)
    width = const.shape[0]
    # ju[n, :, j] = ∇u_j(x_n); curv is symmetric so either index order works
    ju = (x @ curv.permute(1, 2, 0).reshape(dim, dim * width)).view(n, dim, width) + lin
    u = 0.5 * (x[:, :, None] * (ju + lin)).sum(1) + const
    s = torch.sigmoid(u)
    v = s * params["c"]                                       # ∂ψ/∂u >= 0, (n, w)
    grad = (ju * v[:, None, :]).sum(2) + eps * x   # cheaper than a batched mat-vec
    if not hessian:
        return grad, None
    weight = params["c"] * s * (1.0 - s)                      # (n, w) >= 0
    outer = torch.bmm(ju * weight[:, None, :], ju.transpose(1, 2))
    inner = (v @ curv.view(width, dim * dim)).view(n, dim, dim)
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    return grad, outer + inner + eps * eye



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
    xs, ls, ws = [], [], []
    for start in range(0, x.shape[0], OLD_CHUNK):
        xc = x[start:start + OLD_CHUNK]
        lc = None if logp is None else logp[start:start + OLD_CHUNK]
        wc = torch.zeros(xc.shape[0], dtype=x.dtype, device=x.device)
        for k, params in enumerate(maps, start=first_step):
            grad, hess = icnn_grad_hess(params, xc, eps, hessian=lc is not None)
            if lc is not None:
                lc = lc - logdet_pd(hess)[0]
            xc = grad
            wc = wc + _obs_weight(obs, k, xc)
        xs.append(xc)
        ls.append(lc)
        ws.append(wc)
    return torch.cat(xs), None if logp is None else torch.cat(ls), torch.cat(ws)



@torch.no_grad()
def invert_map(params: Params, y: torch.Tensor, eps: float, tol: float = 1e-10,
               max_iter: int = 100) -> tuple[torch.Tensor, int]:
    """Solve ∇ψ(x) = y for every row of ``y (n, D)`` -> (x, n_unconverged).

    Damped Newton on the strongly convex f(x) = ψ(x) − ⟨x, y⟩ with the exact
    Hessian and Armijo backtracking; starts at x = y (maps are near identity).
    """
    x = y.clone()
    slack = 64.0 * torch.finfo(y.dtype).eps
    for _ in range(max_iter):
        grad, hess = icnn_grad_hess(params, x, eps)
        resid = grad - y
        active = resid.norm(dim=1) > tol * (1.0 + y.norm(dim=1))
        if not active.any():
            return x, 0
        chol, _ = torch.linalg.cholesky_ex(hess + 1e-12 * torch.eye(x.shape[1], dtype=x.dtype,
                                                                   device=x.device))
        step = -torch.cholesky_solve(resid[:, :, None], chol)[:, :, 0]
        step = torch.where(torch.isfinite(step), step, -resid)
        f0 = icnn_potential(params, x, eps) - (x * y).sum(1)
        slope = (resid * step).sum(1)
        t = torch.ones_like(f0)
        for _ in range(40):
            trial = x + t[:, None] * step
            f1 = icnn_potential(params, trial, eps) - (trial * y).sum(1)
            ok = f1 <= f0 + 1e-4 * t * slope + slack * (f0.abs() + 1.0)
            if ok.all():
                break
            t = torch.where(ok, t, 0.5 * t)
        x = torch.where(active[:, None], trial, x)
    grad, _ = icnn_grad_hess(params, x, eps, hessian=False)
    unconverged = (grad - y).norm(dim=1) > 1e3 * tol * (1.0 + y.norm(dim=1))
    return x, int(unconverged.sum())


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
    for k in range(len(maps), 0, -1):
        weight = weight + _obs_weight(obs, k, x)
        x, unconverged = invert_map(maps[k - 1], x, eps)
        bad += unconverged
        _, hess = icnn_grad_hess(maps[k - 1], x, eps)
        logdet = logdet + logdet_pd(hess)[0]
    return x, logdet, bad, weight




# --- round 2 (issue 18 and after; before issue 36) --------------------------------------------
# The hot path of solvers/icnn_jko.py before the Gram products were blocked and the
# K-contractions packed: full (D, D) curvature matrices, the (n, D, w) input-Jacobian
# tensor built whole, a weighted Gram with a one-product backward, ∇ψ by a batched
# mat-vec. tests/test_icnn_jko.py checks the current loss and gradients against it in
# float64; bench_icnn_jko.py times it side by side.
def round2_quadratic_form(params: Params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``K (w, D, D)``, ``B (D, w)``, ``a (w,)``; Σ_r Q_rj Q_rjᵀ by a (D, D, r, w) broadcast."""
    dim, width = params["W1"].shape[1], params["b1"].shape[0]
    q1 = params["Q1"].view(dim, -1, width)
    q2 = params["Q2"].view(dim, -1, width)
    s1 = (q1[:, None] * q1[None, :]).sum(2).reshape(dim * dim, width).T
    s2 = (q2[:, None] * q2[None, :]).sum(2).reshape(dim * dim, width).T
    curv = 2.0 * (params["Z"] @ s1 + s2).view(width, dim, dim)
    lin = (params["Z"] @ params["W1"] + params["W2"]).T
    const = params["Z"] @ params["b1"] + params["b2"]
    return curv, lin, const


class Round2WeightedGram(torch.autograd.Function):
    """O_n = J_n diag(w_n) J_nᵀ for ``J (n, D, w)``, ``w (n, w)``; backward M = (G + Gᵀ) J."""

    @staticmethod
    def forward(ctx, jac: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(jac, weight)
        return torch.bmm(jac * weight[:, None, :], jac.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        jac, weight = ctx.saved_tensors
        m = torch.bmm(grad_out + grad_out.transpose(1, 2), jac)
        return m * weight[:, None, :], 0.5 * (m * jac).sum(1)


def round2_grad_hess(params: Params, x: torch.Tensor, eps: float, hessian: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """∇ψ ``(n, D)`` and ∇²ψ ``(n, D, D)`` as round 2 computed them (differentiable)."""
    n, dim = x.shape
    curv, lin, const = round2_quadratic_form(params)
    width = const.shape[0]
    curv_flat = curv.view(width, dim * dim)
    xx = (x[:, :, None] * x[:, None, :]).reshape(n, dim * dim)
    u = torch.addmm(const, xx, curv_flat.T, alpha=0.5) + x @ lin
    s = torch.sigmoid(u)
    v = s * params["c"]
    inner = (v @ curv_flat).view(n, dim, dim)
    grad = torch.bmm(inner, x.unsqueeze(2)).squeeze(2) + v @ lin.T + eps * x
    if not hessian:
        return grad, None
    table = torch.cat([curv.permute(1, 2, 0).reshape(dim, dim * width),
                       lin.reshape(1, dim * width)], 0)
    ones = torch.ones(n, 1, dtype=x.dtype, device=x.device)
    ju = (torch.cat([x, ones], 1) @ table).view(n, dim, width)
    weight = params["c"] * s * (1.0 - s)
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    return grad, Round2WeightedGram.apply(ju, weight) + inner + eps * eye


def round2_jko_loss(params: Params, x: torch.Tensor, h: float, beta: float, eps: float,
                    potential) -> torch.Tensor:
    """The h-scaled JKO objective as round 2 computed it (Cholesky log det of its Hessian)."""
    grad, hess = round2_grad_hess(params, x, eps)
    logdet, _ = logdet_pd(hess)
    transport = 0.5 * ((grad - x) ** 2).sum(1).mean()
    return transport + h * (potential(grad).mean() - logdet.mean() / beta)


# --- round 3 (issue 36, before the selection-matrix / fused log-det work) ----------------------
# The hot path of numerics/icnn.py at commit 94a5a48: K packed to its P = D(D+1)/2 upper
# entries with index gathers (x_d x_e, Σ_j v_j K_j unpacked by an index, the Jacobian
# table by an index), the Gram term in row blocks of 2^19 elements (LinearGram), log det
# by Cholesky with the gradient H⁻¹ from cholesky_inverse, Adam with its default
# (single-tensor) implementation. tests/test_icnn_jko.py compares the current loss and
# its gradients with these in float64; bench_icnn_jko.py times the two side by side.
ROUND3_GRAM_BLOCK = 2 ** 19


def round3_symmetric_packing(dim: int, device: torch.device | str = "cpu"
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows, cols (P,)`` of the upper triangle; ``full (D*D,)``: each entry's packed position."""
    rows, cols = torch.triu_indices(dim, dim, device=device)
    pos = torch.empty(dim, dim, dtype=torch.long, device=device)
    packed = torch.arange(rows.shape[0], device=device)
    pos[rows, cols] = packed
    pos[cols, rows] = packed
    return rows, cols, pos.reshape(-1)


def round3_packed_quadratic_form(params: Params
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``K (P, w)`` packed upper triangles, ``B (D, w)``, ``a (w,)``, by index gathers."""
    dim, width = params["W1"].shape[1], params["b1"].shape[0]
    rows, cols, _ = round3_symmetric_packing(dim, params["Q1"].device)
    q1 = params["Q1"].view(dim, -1, width)
    q2 = params["Q2"].view(dim, -1, width)
    s1 = (q1[rows] * q1[cols]).sum(1)
    s2 = (q2[rows] * q2[cols]).sum(1)
    curv = 2.0 * torch.addmm(s2, s1, params["Z"].T)
    lin = (params["Z"] @ params["W1"] + params["W2"]).T
    const = params["Z"] @ params["b1"] + params["b2"]
    return curv, lin, const


class Round3LinearGram(torch.autograd.Function):
    """H_n = base_n + J_n diag(w_n) J_nᵀ, J_n = ([x_n, 1] @ table).view(D, w), in row blocks."""

    @staticmethod
    def forward(ctx, xt, table, weight, base, rows):
        ctx.save_for_backward(xt, table, weight)
        ctx.rows = rows
        out = base.clone()
        width = weight.shape[1]
        for start in range(0, xt.shape[0], rows):
            jac = (xt[start:start + rows] @ table).view(-1, table.shape[1] // width, width)
            out[start:start + rows].baddbmm_(jac * weight[start:start + rows, None, :],
                                             jac.transpose(1, 2))
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, table, weight = ctx.saved_tensors
        rows, width = ctx.rows, weight.shape[1]
        sym = grad_out + grad_out.transpose(1, 2)
        d_table = torch.zeros_like(table)
        d_weight = torch.empty_like(weight)
        for start in range(0, xt.shape[0], rows):
            stop = min(start + rows, xt.shape[0])
            jac = (xt[start:stop] @ table).view(stop - start, -1, width)
            m = torch.bmm(sym[start:stop], jac)
            torch.sum(m * jac, 1, out=d_weight[start:stop])
            m *= weight[start:stop, None, :]
            d_table.addmm_(xt[start:stop].T, m.view(stop - start, -1))
        return None, d_table, d_weight.mul_(0.5), grad_out, None


def round3_grad_hess(params: Params, x: torch.Tensor, eps: float, hessian: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """∇ψ ``(n, D)`` and ∇²ψ ``(n, D, D)`` as round 3 computed them (differentiable)."""
    n, dim = x.shape
    curv, lin, const = round3_packed_quadratic_form(params)
    width = const.shape[0]
    rows, cols, full = round3_symmetric_packing(dim, x.device)
    half = torch.where(rows == cols, 0.5, 1.0).to(x.dtype)
    xx = x[:, rows] * x[:, cols] * half
    u = torch.addmm(const, xx, curv) + x @ lin
    s = torch.sigmoid(u)
    v = s * params["c"]
    inner = (v @ curv.T)[:, full].view(n, dim, dim)
    grad = (inner * x[:, None, :]).sum(2) + v @ lin.T + eps * x
    if not hessian:
        return grad, None
    table = torch.cat([curv[full].view(dim, dim * width), lin.reshape(1, dim * width)], 0)
    xt = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], 1)
    weight = params["c"] * s * (1.0 - s)
    base = inner + eps * torch.eye(dim, dtype=x.dtype, device=x.device)
    block = max(1, min(n, max(64, ROUND3_GRAM_BLOCK // (dim * width))))
    return grad, Round3LinearGram.apply(xt, table, weight, base, block)


class Round3LogDetPD(torch.autograd.Function):
    """log det H from a Cholesky factor; gradient H⁻¹ by ``cholesky_inverse`` of it."""

    @staticmethod
    def forward(ctx, hess, chol):
        ctx.save_for_backward(chol)
        return 2.0 * torch.log(chol.diagonal(dim1=-2, dim2=-1)).sum(-1)

    @staticmethod
    def backward(ctx, grad_out):
        (chol,) = ctx.saved_tensors
        return grad_out[:, None, None] * torch.cholesky_inverse(chol), None


def round3_logdet_pd(hess: torch.Tensor) -> torch.Tensor:
    """log det of SPD ``(n, D, D)`` as round 3 computed it (jitter for non-PD ones)."""
    with torch.no_grad():
        chol, _ = _cholesky_with_jitter(hess)
    return Round3LogDetPD.apply(hess, chol)


def round3_jko_loss(params: Params, x: torch.Tensor, h: float, beta: float, eps: float,
                    potential) -> torch.Tensor:
    """The h-scaled JKO objective (potential and entropy terms) as round 3 computed it."""
    grad, hess = round3_grad_hess(params, x, eps)
    logdet = round3_logdet_pd(hess)
    transport = 0.5 * ((grad - x) ** 2).sum(1).mean()
    return transport + h * (potential(grad).mean() - logdet.mean() / beta)


def round3_train_iteration(params: Params, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                           h: float, beta: float, eps: float, potential) -> float:
    """One round-3 iteration: zero, loss, backward, Adam step (as the caller built it), clamp."""
    optimizer.zero_grad(set_to_none=True)
    loss = round3_jko_loss(params, x, h, beta, eps, potential)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        params["Z"].clamp_(min=0.0)
        params["c"].clamp_(min=0.0)
    return float(loss.detach())
