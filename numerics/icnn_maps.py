"""Transport maps from DenseICNN potentials: pushes, Newton inversions, pulled-back densities.

Split from :mod:`numerics.icnn` (the network and its gradient/Hessian kernels);
shared by :mod:`solvers.icnn_jko` and :mod:`solvers.vwgf`, with the helpers both
use to train a map (identity pre-training, cosine learning-rate factor, the
JKO step's potential).

Maps and densities: :func:`push` / :func:`push_trajectory` push points
through ∇ψ of a sequence of maps with log ρ^(k)(∇ψ(x)) = log ρ^(k−1)(x) −
log det ∇²ψ(x); :func:`pull_back` inverts each map by batched damped Newton
on ψ(x) − ⟨x, y⟩ (exact Hessian, residual-decrease backtracking), in
float64, with a float32 start (:func:`invert_map`).

Like every numerics module it imports nothing of gfbench above numerics: the
solvers pass a task's callables in (:func:`identity_pretrain_sampler`,
:func:`pulled_back_log_density`); :func:`step_potential` duck-types its task.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from numerics.icnn import (Params, clamp_nonnegative_, icnn_grad_hess, logdet_pd)

#: rows per chunk when pushing / inverting many points: a (1024, D, w) float64 block of
#: ∇u stays in cache at the sizes that matter (measured 1.5-2x faster than 4096 rows)
CHUNK = 1024


# ------------------------------------------------------------- training helpers
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


def identity_pretrain_sampler(sample_initial: Callable[[int, np.random.Generator], np.ndarray],
                              n: int, rng: np.random.Generator,
                              to_tensor: Callable[[np.ndarray], torch.Tensor]
                              ) -> Callable[[], torch.Tensor]:
    """Batches for :func:`pretrain_identity`: ``n`` draws of ρ0, half spread 2× around their mean.

    The spread half makes the pre-trained map the identity in ρ0's tails too,
    where later steps push samples (a departure from Mokrov et al., who fit
    the identity on ρ0 alone).

    Parameters
    ----------
    sample_initial : callable
        ``sample_initial(n, rng) -> (n, D)`` float64 draws of ρ0 (a task's).
    n : int
        Rows per batch.
    rng : numpy.random.Generator
        Drawn from at every call (the solver's training stream).
    to_tensor : callable
        Converts a batch to the training dtype and device.

    Returns
    -------
    callable
        ``sample() -> (n, D)`` tensor.
    """
    def sample() -> torch.Tensor:
        x = sample_initial(n, rng)
        centre = x.mean(0)
        x[: n // 2] = centre + 2.0 * (x[: n // 2] - centre)
        return to_tensor(x)

    return sample


def step_potential(task, t: float, time_dependent: bool, data_batch_size: int,
                   rng: np.random.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """V on tensors for a JKO step ending at time ``t``: ``V(y (n, D)) -> (n,)``.

    A time-dependent V is taken at the step's end (``task.potential_t_torch``:
    the implicit JKO step's time). Otherwise, for a task whose ``data_batch``
    returns a minibatch (posteriors), V is a fresh minibatch estimate at every
    call; the probe that finds out draws one batch from ``rng`` (callers that
    build this once per run keep their random stream). ``task`` is duck-typed:
    numerics imports no task code.
    """
    if time_dependent:
        return lambda y: task.potential_t_torch(y, t)
    probe = task.data_batch(data_batch_size, rng) if data_batch_size > 0 else None
    if probe is None:
        return lambda y: task.potential_torch(y)
    return lambda y: task.potential_torch(y, task.data_batch(data_batch_size, rng))


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



def pulled_back_log_density(maps: list[Params], y: torch.Tensor, eps: float,
                            log_density_initial: Callable[[np.ndarray], np.ndarray],
                            obs: ObsLogLik | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """log ρ0(x0) − Σ_k log det ∇²ψ_k + Σ_k log L_k along the pulled-back trajectory of ``y``.

    Parameters
    ----------
    maps : list of Params
        The maps in the order they were applied (float64 for densities).
    y : Tensor (n, D)
        Points at which the pushed law's log-density is wanted.
    eps : float
        The maps' strong-convexity term.
    log_density_initial : callable
        ``(n, D) ndarray -> (n,)`` log ρ0 (a task's; −∞ off a compact support stays −∞).
    obs : ObsLogLik, optional
        Observation log-likelihoods by step (filtering): the result is then unnormalised.
    chunk : int
        Rows inverted at once (the rounding of batched GEMMs depends on it, so a
        caller keeps its chunk to keep its numbers).

    Returns
    -------
    Tensor (n,) float64
    """
    out = []
    for start in range(0, y.shape[0], chunk):
        x0, logdet, _, log_w = pull_back(maps, y[start:start + chunk], eps, obs)
        log0 = torch.as_tensor(np.asarray(log_density_initial(x0.cpu().numpy())),
                               dtype=torch.float64, device=y.device)
        out.append(log0 - logdet + log_w)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=y.device)
