"""Adaptive Dormand–Prince 5(4) for a batch of trajectories sharing one step.

Written for :mod:`solvers.scvm` (its training ODE, the integrator and tolerance
of the SCVM authors' diffrax solve) and generic: the field is a
:data:`StageField`, so any batched velocity can be integrated.

FSAL (six field evaluations a step), local
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
and 23 rejections).

Split from solvers/scvm.py unchanged (same operations in the same order).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch


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
