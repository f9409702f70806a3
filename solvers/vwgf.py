"""Variational Wasserstein gradient flow (Fan, Taghvaei & Chen, ICML 2022).

Each JKO step of size h learns a push-forward map T_θ and sets
ρ^(k) = T_θ # ρ^(k−1), minimising

    (1/2h) E‖T(X) − X‖² + E Φ(T(X)) + U(T # ρ^(k−1)),   X ~ ρ^(k−1),

where the internal energy U is never evaluated through a density: it is
replaced by a variational (dual) formula whose maximiser is a density ratio,
learnt by a second network g_λ > 0 in an inner maximisation. The step is the
min–max

    min_θ max_λ  (1/2h) E‖T(X) − X‖² + E Φ(T(X)) + A(T(X); g_λ) − B(Z; g_λ),

with Z drawn from a reference law R that the solver chooses and can sample.

Internal energies (``U``)
-------------------------
- Entropy, U = β⁻¹∫ρ log ρ (Fokker–Planck). With a Gaussian reference Γ
  (density γ) fitted to the mean and covariance of ρ^(k−1) at the start of
  each step (the paper's ``update_gamma``),
  ∫ρ log ρ = KL(ρ‖Γ) + E_ρ log γ and KL(ρ‖Γ) = sup_{g>0} E_ρ log g − E_Γ g + 1
  (maximiser g = ρ/γ), so A = β⁻¹(E log g(TX) + E log γ(TX)), B = β⁻¹ E_Γ g(Z)
  (the additive 1 is dropped: it moves neither player). :func:`kl_dual`.
- Porous medium, U = c ∫ρ^m/(m−1), m > 1. With a uniform reference Q on a
  cube [−R, R]^D (density q; R = 1.5 × the largest |coordinate| of
  ρ^(k−1), the paper's ``q_bound_scale``) and g = ρ/q on the cube,
  ∫ρ^m/(m−1) = sup_g E_ρ[m/(m−1) (q g)^(m−1)] − q^(m−1) E_Q[g^m] (pointwise,
  s ↦ m/(m−1) ρ s^(m−1) − s^m peaks at s = ρ with value ρ^m/(m−1)).
  :func:`power_dual`. Needs the task's free-energy declaration (see
  :meth:`Vwgf.skip`); the functions are tested on their own.

Networks (the paper's parametrisations)
---------------------------------------
- Ratio g_λ (``ratio``): an MLP with PReLU activations (also after the last
  layer, the paper's ``final_actv``), ``ratio_depth`` hidden layers of
  ``ratio_width`` (the paper's ``num_layer`` + 1). ``"square"``: g = u²
  (the paper's ``quadr``, its OU and BLR configs); ``"bounded"``:
  g = exp(20σ(3u/20)) − 1 (the paper's ``sigmoid`` + ``smooth_h``, its
  mixture configs), log g floored at log 1e-5 as in its code; ``square``
  floors g at 1e-10; ``"log"``: g = exp(u) (the paper's log-ratio option,
  ``non_log_ratio = 0``).
- Map T_θ (``map``):
  ``"icnn"`` (default): T = ∇ψ of icnn_jko's DenseICNN (:mod:`numerics.icnn`)
  (two hidden layers of ``width``, rank-``rank`` quadratic blocks, softplus),
  pre-trained to the identity; the paper uses the gradient of a DenseICNN for
  its porous-medium runs and evaluates densities through it by the change of
  variables. Densities: log ρ^(k)(T(x)) = log ρ^(k−1)(x) − log det ∇²ψ(x);
  ``log_density`` inverts the maps by Newton (``numerics.icnn_maps.pull_back``).
  Law ``iid_density``.
  ``"resnet"``: T(x) = x + PReLU(MLP(x)), ``depth`` hidden layers of
  ``width`` (the paper's mixture and BLR map). Not invertible by
  construction, so no density: law ``iid`` (fresh ρ0 draws pushed through
  every map).
  ``"affine"``: T(x) = Wx + b (the paper's OU map, a stack of linear layers,
  is affine). Densities in closed form through the composed affine map;
  law ``iid_density`` (det W ≠ 0 is checked).

Schedule (the paper's loop): every iteration draws a batch of ρ^(k−1) (from a
pool of ``iters`` × ``batch_size`` samples of ρ0 pushed through the maps so
far, walked through in a random order, as its data loader does one epoch of
``n_train_samples``) and a batch of the reference; ``inner_iters`` Adam
steps on g (maximise A − B with T(X) fixed), then ``outer_iters`` Adam steps
on T (g frozen). Both networks and both Adam states carry over from one step
to the next (the paper trains one map and one ratio network through all
steps, warm-started; ``warm_start=False`` restarts the map from the
pre-trained identity at every step, keeping the Adam state); the rates are multiplied by ``lr_decay`` every
``lr_decay_every`` steps (its StepLR on mixtures; 0 = constant, its OU and
BLR configs). ``lr_final`` < 1 adds a cosine decay of the map's rate within
each step down to that fraction (icnn_jko's schedule; not the paper's, off by
default: it did not help, see below). A data task's Φ is a fresh minibatch
estimate at every map step.

Paper defaults and ours
-----------------------
The paper's configs: OU h = 0.05, 500 it/step, batch 1024, lr 5e-3 (both
players), 3 inner : 1 outer, g square (1 hidden layer of 64 + output, i.e.
depth 2), affine map. Mixtures h = 0.1, 1000 it/step, batch 512, lr 1e-3 ×
0.4 every 20 steps, 3 : 2, g bounded (depth 3 × 64), resnet map depth 4 × 64
(8–128 wide with D). BLR h = 0.1, 100 it × 5–70 epochs per step, batch 1024,
lr 5e-4 – 2e-5, resnet depth 2–4 × 16–128, g square. Porous medium h = 5e-4,
1000 it/step, batch 1024, lr 1e-3, ICNN map, g depth 3 × 16.
Ours (CPU): h = 0.05, 200 it/step, batch 512, lr 5e-3, 3 : 1, g square
depth 2 × 64, ICNN map width 64 — see "Measured" below.

Departures from the paper
-------------------------
- The default map is the ICNN gradient on every task (the paper: affine on OU,
  residual MLP on mixtures and BLR), so that every run returns a density; the
  paper's maps are ``map="affine"`` / ``"resnet"``. The ICNN is icnn_jko's
  two-layer DenseICNN (softplus); the paper's porous-medium ICNN has one
  quadratic layer, i.e. an affine gradient.
- The ratio network starts at g ≈ 1 (:func:`init_ratio`; measured below).
- Γ is fitted to ρ0 at the first step too (the paper starts from a fixed
  N(0, σ² I) whose variance its configs set to ρ0's standard deviation).
- No dropout in the resnet map (the paper: 0.02–0.04, left active when it
  pushes samples, which makes the pushed law a mixture over dropout masks),
  no weight decay (1e-7), no halving of h after 20 steps on mixtures (the
  benchmark asks for the law at fixed times, so every step is h).
- A pool of pushed samples instead of re-pushing n_train_samples fresh ρ0
  draws through all maps after every step (the same law; O(K) instead of
  O(K²) map evaluations).
- Identity pre-training of the ICNN: ``pretrain_iters`` (1000; the paper 4000
  at lr 8e-3) at ``lr_map``, on ρ0 batches half spread 2× (icnn_jko's sampler).
- float32 training, float64 densities.

Measured (one thread, this machine shared with other jobs; solver seed 1)
------------------------------------------------------------------------
- Ratio initialisation (:func:`init_ratio`, not in the paper): with a plain
  random output layer, g starts far from 1 (``bounded``: g ≈ e^10 at u = 0),
  and the first map steps follow a meaningless entropy gradient. On OU D = 2
  (task seed 102; 80 it/step, batch 256, widths 32, t = 0.1) the covariance's
  relative error was 0.25 with the random output layer and 0.009 with g ≈ 1 at
  the start; the mean's 0.14 and 0.011.
- OU D = 2 (task seed 0), defaults (200 it/step, h = 0.05): SymKL 0.011 /
  0.027 at t = 0.5 / 1.0 (icnn_jko defaults: 0.0047 / 0.0055; the exact JKO
  floor at h = 0.05, gaussian_jko: 2e-4 / 1e-4); 500 it/step: 0.0063 at
  t = 0.5. The error grows with the number of steps: the law's KL to its own
  Gaussian fit (the ``mc_kl`` diagnostic) reaches 0.009 at t = 1 against
  1.6e-4 for the exact flow, while the dual sees none of it (``dual_kl``
  ≈ 0): distortions of the ICNN map that a batch-512 dual cannot resolve
  are not penalised and accumulate. Neither a lower map rate (2e-3: 0.020 at
  t = 1), a cosine decay within each step (``lr_final`` 0.1: 0.033), twice
  the inner steps (0.040), batch 1024 (0.024), a narrower ratio (0.025) nor
  CELU in the ratio (the paper's porous-medium choice: 0.031) changed this.
  The paper's own OU map (``map="affine"``) cannot distort: SymKL 1e-4 at
  t = 0.2 and 0.5 (the floor's level), with the same dual.
- Cost per iteration (3 ratio steps + 1 map step, batch 512): 7–8 ms at
  D = 2 and 11 ms at D = 8 (icnn_jko: 4 ms at D = 2, with its Hessians); a
  run to t = 1 (20 steps × 200 it) 28 s at D = 2 and 43 s at D = 8, plus
  2.5 s of identity pre-training. OU D = 8 (task seed 0): SymKL 0.065 /
  0.093 at t = 0.5 / 1.0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from solvers.base import (IID, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult,
                          require_positive, steps_to_times)
from numerics.icnn import clamp_nonnegative_, icnn_grad_hess, init_icnn
from numerics.icnn_maps import (cosine_factor, detached, identity_pretrain_sampler,
                                pretrain_identity, pulled_back_log_density, push, step_potential)
from tasks.free_energy import (ENTROPY, INTERACTION, POROUS_MEDIUM, POTENTIAL, TIME_DEPENDENT,
                               free_energy_of)

Params = dict[str, torch.Tensor]
TensorFn = Callable[[torch.Tensor], torch.Tensor]
MAPS = ("icnn", "resnet", "affine")
RATIOS = ("square", "bounded", "log")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: floors of the ratio inside the logarithm (the paper's clamps)
SQUARE_FLOOR, BOUNDED_FLOOR = 1e-10, 1e-5
#: the paper's bounded ratio: g = exp(BOUND σ(SLOPE·u)) − 1
BOUND, SLOPE = 20.0, 3.0 / 20.0
#: PReLU slope at initialisation (torch's default)
PRELU_INIT = 0.25
#: rows per chunk when pushing many points through a map
CHUNK = 4096
#: the porous reference cube's half-width over the largest |coordinate| of ρ^(k−1)
BOX_SCALE = 1.5
#: points for the self-diagnostic of the last inner maximisation
CHECK_POINTS = 4096


# --------------------------------------------------------------------------- networks
def init_mlp(sizes: Sequence[int], generator: torch.Generator, dtype: torch.dtype
             ) -> Params:
    """Parameters of a PReLU MLP with layer sizes ``sizes`` (input first, output last).

    ``W{i} (sizes[i+1], sizes[i])`` ~ N(0, 1/fan_in), ``b{i}`` zeros, ``a{i} (1,)``
    the PReLU slope after layer i (0.25).
    """
    params: Params = {}
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64)
        params[f"W{i}"] = (w / math.sqrt(fan_in)).to(dtype)
        params[f"b{i}"] = torch.zeros(fan_out, dtype=dtype)
        params[f"a{i}"] = torch.full((1,), PRELU_INIT, dtype=dtype)
    return {k: v.requires_grad_(True) for k, v in params.items()}


def mlp(params: Params, x: torch.Tensor) -> torch.Tensor:
    """PReLU after every layer, the last included (the paper's ``full_activ``)."""
    n_layers = sum(1 for key in params if key.startswith("W"))
    for i in range(n_layers):
        x = torch.nn.functional.prelu(x @ params[f"W{i}"].T + params[f"b{i}"], params[f"a{i}"])
    return x


def init_map(kind: str, dim: int, width: int, depth: int, rank: int,
             generator: torch.Generator, dtype: torch.dtype) -> Params:
    """Initial parameters of a map: ``icnn``, ``resnet`` or ``affine`` (identity)."""
    if kind == "icnn":
        return init_icnn(dim, width, rank, generator, dtype)
    if kind == "resnet":
        return init_mlp([dim] + [width] * depth + [dim], generator, dtype)
    if kind == "affine":
        return {"W": torch.eye(dim, dtype=dtype).requires_grad_(True),
                "b": torch.zeros(dim, dtype=dtype).requires_grad_(True)}
    raise ValueError(f"unknown map {kind!r}; known: {MAPS}")


def apply_map(kind: str, params: Params, x: torch.Tensor, eps: float) -> torch.Tensor:
    """T(x) for ``x (n, D)`` -> ``(n, D)``, differentiable in the parameters."""
    if kind == "icnn":
        return icnn_grad_hess(params, x, eps, hessian=False)[0]
    if kind == "resnet":
        return x + mlp(params, x)
    return x @ params["W"].T + params["b"]


def init_ratio(dim: int, width: int, depth: int, kind: str, generator: torch.Generator,
               dtype: torch.dtype) -> Params:
    """A ratio network whose output is g ≈ 1 at initialisation.

    The last layer's weights are scaled by 0.1 and its bias set so that a zero
    pre-activation gives g = 1 (``square``: u = 1; ``bounded``: u = logit(log 2 / 20) / (3/20)
    through the PReLU's negative branch). g ≡ 1 is the dual's maximiser when
    ρ = Γ, which is where every step starts (Γ is fitted to ρ^(k−1), T ≈ id).
    """
    params = init_mlp([dim] + [width] * depth + [1], generator, dtype)
    last = depth
    with torch.no_grad():
        params[f"W{last}"].mul_(0.1)
        if kind == "square":
            params[f"b{last}"].fill_(1.0)
        elif kind == "log":
            params[f"b{last}"].zero_()
        else:
            target = math.log(math.log(2.0) / BOUND / (1.0 - math.log(2.0) / BOUND)) / SLOPE
            params[f"b{last}"].fill_(target / PRELU_INIT)
    return params


def log_ratio_and_ratio(kind: str, params: Params, x: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log g, g) of the ratio network at ``x (n, D)``, each ``(n,)``, floored as the paper."""
    u = mlp(params, x)[:, 0]
    if kind == "square":
        g = u * u
        return torch.log(g.clamp_min(SQUARE_FLOOR)), g
    if kind == "log":
        return u, torch.exp(u)
    g = torch.expm1(BOUND * torch.sigmoid(SLOPE * u))
    return torch.log(g.clamp_min(BOUNDED_FLOOR)), g


# ----------------------------------------------------------------- variational formulas
def kl_dual(log_g_rho: torch.Tensor, g_ref: torch.Tensor) -> torch.Tensor:
    """E_ρ log g − E_Γ g + 1: a lower bound of KL(ρ‖Γ), tight at g = dρ/dΓ."""
    return log_g_rho.mean() - g_ref.mean() + 1.0


def power_dual(g_rho: torch.Tensor, g_ref: torch.Tensor, q: float, m: float) -> torch.Tensor:
    """E_ρ[m/(m−1)(q g)^(m−1)] − q^(m−1) E_Q[g^m]: a lower bound of ∫ρ^m/(m−1).

    Q is uniform with density ``q`` on a set holding ρ's support; tight at
    g = ρ/q there.
    """
    return (m / (m - 1.0) * (q * g_rho) ** (m - 1.0)).mean() - q ** (m - 1.0) * (g_ref ** m).mean()


@dataclass(frozen=True)
class GaussianReference:
    """Γ = N(mean, chol cholᵀ): the entropy's reference law for one step."""

    mean: torch.Tensor
    chol: torch.Tensor

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        eps = torch.as_tensor(rng.standard_normal((n, self.mean.shape[0])),
                              dtype=self.mean.dtype)
        return self.mean + eps @ self.chol.T

    def mahalanobis_sq(self, x: torch.Tensor) -> torch.Tensor:
        """(x − mean)ᵀ cov⁻¹ (x − mean) for each row ``(n,)``."""
        z = torch.linalg.solve_triangular(self.chol, (x - self.mean).T, upper=False)
        return (z * z).sum(0)

    def log_density(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.mean.shape[0]
        return (-0.5 * self.mahalanobis_sq(x) - torch.log(self.chol.diagonal()).sum()
                - 0.5 * dim * math.log(2.0 * math.pi))


def fit_gaussian(x: torch.Tensor) -> GaussianReference:
    """Γ with the sample mean and covariance of ``x (n, D)`` (float64 fit, cast back).

    A relative jitter of 1e-8 on the diagonal keeps the factor defined for a
    degenerate pool.
    """
    x64 = x.detach().double()
    mean = x64.mean(0)
    cov = torch.atleast_2d(torch.cov(x64.T))
    cov = cov + 1e-8 * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)
    return GaussianReference(mean.to(x.dtype), torch.linalg.cholesky(cov).to(x.dtype))


@dataclass(frozen=True)
class UniformReference:
    """Q = uniform on the cube [−half_width, half_width]^D: the porous medium's reference."""

    half_width: float
    dim: int
    dtype: torch.dtype

    @property
    def density(self) -> float:
        return (2.0 * self.half_width) ** (-self.dim)

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        u = rng.uniform(-self.half_width, self.half_width, size=(n, self.dim))
        return torch.as_tensor(u, dtype=self.dtype)


def fit_box(x: torch.Tensor, scale: float = BOX_SCALE) -> UniformReference:
    """The cube ``scale`` × max |x_ij| wide each way (the paper's ``update_gamma``)."""
    return UniformReference(float(scale * x.detach().abs().max()), x.shape[1], x.dtype)


# ------------------------------------------------------------------------ energies
@dataclass(frozen=True)
class InternalEnergy:
    """U(ρ) = coef · ∫ρ log ρ (``power`` None) or coef · ∫ρ^m/(m−1) (``power`` = m)."""

    coef: float
    power: float | None = None

    def reference(self, pool: torch.Tensor):
        return fit_gaussian(pool) if self.power is None else fit_box(pool)

    def dual(self, kind: str, params: Params, tx: torch.Tensor, z: torch.Tensor,
             ref) -> torch.Tensor:
        """The variational lower bound of U(law of tx)/coef − (E log γ(tx) for entropy)."""
        log_g, g = log_ratio_and_ratio(kind, params, tx)
        _, g_ref = log_ratio_and_ratio(kind, params, z)
        if self.power is None:
            return kl_dual(log_g, g_ref)
        return power_dual(g, g_ref, ref.density, self.power)

    def map_term(self, kind: str, params: Params, tx: torch.Tensor, ref) -> torch.Tensor:
        """The part of coef · dual that depends on T (what the map minimises)."""
        log_g, g = log_ratio_and_ratio(kind, params, tx)
        if self.power is None:
            return self.coef * (log_g.mean() + ref.log_density(tx).mean())
        m, q = self.power, ref.density
        return self.coef * (m / (m - 1.0) * (q * g) ** (m - 1.0)).mean()

    def monte_carlo(self, logp: np.ndarray, x: torch.Tensor, ref) -> float:
        """What :meth:`dual` estimates, from samples with their exact log-densities.

        Entropy: KL(ρ‖Γ) = E_ρ[log ρ − log γ]; porous medium:
        ∫ρ^m/(m−1) = E_ρ[ρ^(m−1)]/(m−1).
        """
        if self.power is None:
            with torch.no_grad():
                log_gamma = ref.log_density(x).double().numpy()
            return float(np.mean(logp - log_gamma))
        m = self.power
        return float(np.mean(np.exp((m - 1.0) * logp)) / (m - 1.0))


def energy_of(task: Any) -> InternalEnergy | None:
    """The task's internal energy (tasks/free_energy.py's contract); None if it has none."""
    fe = free_energy_of(task)
    if fe.internal == ENTROPY:
        return InternalEnergy(coef=1.0 / fe.beta)
    if fe.internal == POROUS_MEDIUM:
        return InternalEnergy(coef=1.0 / fe.beta, power=float(fe.exponent))
    return None


# ------------------------------------------------------------------------- training
def ratio_step(optimizer: torch.optim.Optimizer, energy: InternalEnergy, kind: str,
               params: Params, tx: torch.Tensor, z: torch.Tensor, ref) -> float:
    """One Adam step of the inner maximisation; returns the dual value before it."""
    optimizer.zero_grad(set_to_none=True)
    value = energy.dual(kind, params, tx, z, ref)
    (-value).backward()
    optimizer.step()
    return float(value.detach())


def map_loss(map_kind: str, map_params: Params, ratio_kind: str, ratio_params: Params,
             x: torch.Tensor, h: float, eps: float, potential: TensorFn,
             energy: InternalEnergy | None, ref, interaction: TensorFn | None = None
             ) -> torch.Tensor:
    """(1/2h)E‖T(x) − x‖² + E V(T(x)) [+ ½E W(T(x) − T(x'))] + the map's part of U.

    The interaction's pairs are consecutive rows of the batch (x' = the next
    row, cyclically): the batch is in random order, so each pair is two
    independent draws and the mean is unbiased for ½∬W dρ dρ.
    """
    tx = apply_map(map_kind, map_params, x, eps)
    loss = 0.5 * ((tx - x) ** 2).sum(1).mean() / h + potential(tx).mean()
    if interaction is not None:
        loss = loss + 0.5 * interaction(tx - torch.roll(tx, 1, dims=0)).mean()
    if energy is not None:
        loss = loss + energy.map_term(ratio_kind, ratio_params, tx, ref)
    return loss


@torch.no_grad()
def push_points(kind: str, maps: list[Params], x: torch.Tensor, eps: float,
                logp: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Push ``x (n, D)`` through ``maps`` in order; log-densities by the change of variables.

    ``logp`` is only possible for ``icnn`` and ``affine`` maps.
    """
    if kind == "icnn":
        return push(maps, x, eps, logp)
    if logp is not None and kind != "affine":
        raise ValueError(f"a {kind} map has no density")
    out = torch.empty_like(x)
    for start in range(0, x.shape[0], CHUNK):
        xc = x[start:start + CHUNK]
        for params in maps:
            xc = apply_map(kind, params, xc, eps)
        out[start:start + CHUNK] = xc
    if logp is None:
        return out, None
    logdet = sum(torch.linalg.slogdet(p["W"])[1] for p in maps) if maps else 0.0
    return out, logp - logdet


def compose_affine(maps: list[Params]) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) float64 of T_K ∘ … ∘ T_1 for affine maps."""
    dim = maps[0]["W"].shape[0]
    w, b = np.eye(dim), np.zeros(dim)
    for p in maps:
        wk, bk = p["W"].detach().double().numpy(), p["b"].detach().double().numpy()
        w, b = wk @ w, wk @ b + bk
    return w, b


def _lr_factor(step: int, decay: float, every: int) -> float:
    """The paper's StepLR factor at JKO step ``step`` (1-based)."""
    return 1.0 if every <= 0 else decay ** ((step - 1) // every)


# ---------------------------------------------------------------------------- solver
class Vwgf(Solver):
    name = "vwgf"
    version = "1"
    parameters = {
        "h": [0.05], "map": ["icnn"], "width": [64], "depth": [3], "rank": [5],
        "ratio": ["square"], "ratio_width": [64], "ratio_depth": [2],
        "iters": [200], "batch_size": [512], "inner_iters": [3], "outer_iters": [1],
        "lr_map": [5e-3], "lr_ratio": [5e-3], "lr_final": [1.0], "lr_decay": [0.4],
        "lr_decay_every": [0], "warm_start": [True],
        "pretrain_iters": [1000], "strong_convexity": [1e-6], "pool_size": [0],
        "data_batch_size": [512], "n_samples": [4096], "dtype": ["float32"],
    }
    capabilities = frozenset({SAMPLES, LOG_DENSITY})
    #: the free-energy terms handled (tasks/free_energy.py): V (at the step's end time when it
    #: depends on t), W by pairs of batch rows, and either internal energy through its dual
    supports = frozenset({POTENTIAL, TIME_DEPENDENT, INTERACTION, ENTROPY, POROUS_MEDIUM})
    labels = {"iters": "it/step", "width": "w", "batch_size": "batch",
              "inner_iters": "inner", "outer_iters": "outer"}
    description = ("variational Wasserstein gradient flow (Fan et al. 2022): JKO with a "
                   "push-forward map and a dual estimate of the internal energy")

    @classmethod
    def validate_params(cls, params):
        super().validate_params(params)
        require_positive(cls.name, params, "h", "lr_map", "lr_ratio", "lr_final", "lr_decay",
                         "strong_convexity")
        for key, low in (("width", 1), ("depth", 1), ("rank", 1), ("ratio_width", 1),
                         ("ratio_depth", 1), ("iters", 1), ("batch_size", 2),
                         ("inner_iters", 1), ("outer_iters", 1), ("lr_decay_every", 0),
                         ("pretrain_iters", 0), ("pool_size", 0), ("data_batch_size", 0),
                         ("n_samples", 1)):
            value = params[key]
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) \
                    or value < low:
                raise ValueError(f"solver 'vwgf': {key} must be an integer >= {low}, "
                                 f"got {value!r}")
        for key, known in (("map", MAPS), ("ratio", RATIOS), ("dtype", tuple(DTYPES))):
            if params[key] not in known:
                raise ValueError(f"solver 'vwgf': {key} must be one of {list(known)}, "
                                 f"got {params[key]!r}")
        for key in ("lr_decay", "lr_final"):
            if params[key] > 1:
                raise ValueError(f"solver 'vwgf': {key} is a factor in (0, 1], "
                                 f"got {params[key]!r}")
        if not isinstance(params["warm_start"], (bool, np.bool_)):
            raise ValueError("solver 'vwgf': warm_start must be true or false, "
                             f"got {params['warm_start']!r}")
        if 0 < params["pool_size"] < params["batch_size"]:
            raise ValueError("solver 'vwgf': pool_size must be 0 (auto) or >= batch_size "
                             f"({params['pool_size']} < {params['batch_size']})")

    def skip(self, task):
        if getattr(task, "observations", ()):
            return True, ("vwgf computes JKO steps of a free energy; it does not assimilate "
                          "observations (filtering)")
        return False, ""

    # setup -------------------------------------------------------------------------
    def setup(self, task, times, seed, context):
        p = self.params
        self.task, self.times = task, sorted(float(t) for t in times)
        self.h, self.eps = float(p["h"]), float(p["strong_convexity"])
        self.steps = steps_to_times(self.times, self.h)
        if not self.steps or self.steps[0] < 1:
            raise ValueError(f"solver 'vwgf': needs evaluation times of at least one step "
                             f"h = {self.h}, got {times}")
        self.dtype, self.progress = DTYPES[p["dtype"]], context.progress
        self.map_kind, self.ratio_kind = str(p["map"]), str(p["ratio"])
        train_seed, init_seed, result_seed, check_seed = seed.spawn(4)
        self.rng = np.random.default_rng(train_seed)
        self.result_rng = np.random.default_rng(result_seed)
        self.check_rng = np.random.default_rng(check_seed)
        gen = torch.Generator().manual_seed(int(init_seed.generate_state(1)[0]))
        self.energy = energy_of(task)
        self.terms = free_energy_of(task).terms
        self.map0 = init_map(self.map_kind, task.dim, int(p["width"]), int(p["depth"]),
                             int(p["rank"]), gen, self.dtype)
        self.ratio0 = init_ratio(task.dim, int(p["ratio_width"]), int(p["ratio_depth"]),
                                 self.ratio_kind, gen, self.dtype)
        self.info: dict[str, Any] = {}
        if self.map_kind == "icnn" and int(p["pretrain_iters"]) > 0:
            self.info["pretrain_loss"] = pretrain_identity(
                self.map0, self._pretrain_sampler(), int(p["pretrain_iters"]),
                float(p["lr_map"]), self.eps)

    def _tensor(self, a: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=dtype or self.dtype)

    def _pretrain_sampler(self) -> Callable[[], torch.Tensor]:
        """Batches of ρ0, half of them spread 2× around the batch mean (as icnn_jko)."""
        return identity_pretrain_sampler(self.task.sample_initial, int(self.params["batch_size"]),
                                         self.rng, self._tensor)

    def _potential(self, t: float) -> TensorFn:
        """V on tensors for the step ending at time ``t`` (at its end when V depends on t)."""
        return step_potential(self.task, t, TIME_DEPENDENT in self.terms,
                              int(self.params["data_batch_size"]), self.rng)

    # run ----------------------------------------------------------------------------
    def run(self):
        p = self.params
        n_steps, batch = self.steps[-1], int(p["batch_size"])
        iters, inner, outer = int(p["iters"]), int(p["inner_iters"]), int(p["outer_iters"])
        interaction = self.task.interaction_torch if INTERACTION in self.terms else None
        if self.energy is None:
            inner = 0  # no internal energy: nothing for the ratio to estimate
        pool_size = int(p["pool_size"]) or batch * iters
        pool = self._tensor(self.task.sample_initial(pool_size, self.rng))
        map_params = {k: v.detach().clone().requires_grad_(True) for k, v in self.map0.items()}
        ratio_params = {k: v.detach().clone().requires_grad_(True)
                        for k, v in self.ratio0.items()}
        lr_map, lr_ratio = float(p["lr_map"]), float(p["lr_ratio"])
        # one optimiser per player for the whole run: the paper's Lightning module keeps both
        opt_map = torch.optim.Adam(list(map_params.values()), lr=lr_map)
        opt_ratio = torch.optim.Adam(list(ratio_params.values()), lr=lr_ratio)
        self.maps: list[Params] = []
        step_times, map_losses, duals, results = [], [], [], {}
        order: np.ndarray | None = None
        for k in range(1, n_steps + 1):
            start = time.perf_counter()
            factor = _lr_factor(k, float(p["lr_decay"]), int(p["lr_decay_every"]))
            opt_ratio.param_groups[0]["lr"] = lr_ratio * factor
            if k > 1 and not p["warm_start"]:
                # restart from the (pre-trained) identity; the Adam state is kept
                with torch.no_grad():
                    for key, value in self.map0.items():
                        map_params[key].copy_(value)
            potential = self._potential(k * self.h)
            ref = None if self.energy is None else self.energy.reference(pool)
            tail = max(1, iters // 10)
            dual, dual_sum, loss_sum = 0.0, 0.0, 0.0
            for i in range(iters):
                opt_map.param_groups[0]["lr"] = lr_map * factor * cosine_factor(
                    i, iters, float(p["lr_final"]))
                if order is None or order.shape[0] < batch:
                    order = self.rng.permutation(pool.shape[0])
                x = pool[torch.as_tensor(order[:batch])]
                order = order[batch:]
                if inner:
                    z = ref.sample(batch, self.rng)
                    with torch.no_grad():
                        tx = apply_map(self.map_kind, map_params, x, self.eps)
                for _ in range(inner):
                    dual = ratio_step(opt_ratio, self.energy, self.ratio_kind, ratio_params,
                                      tx, z, ref)
                for param in ratio_params.values():
                    param.requires_grad_(False)
                for _ in range(outer):
                    opt_map.zero_grad(set_to_none=True)
                    loss = map_loss(self.map_kind, map_params, self.ratio_kind, ratio_params,
                                    x, self.h, self.eps, potential, self.energy, ref,
                                    interaction)
                    loss.backward()
                    opt_map.step()
                    if self.map_kind == "icnn":
                        clamp_nonnegative_(map_params)
                for param in ratio_params.values():
                    param.requires_grad_(True)
                if i >= iters - tail:
                    dual_sum, loss_sum = dual_sum + dual, loss_sum + float(loss.detach())
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"vwgf: JKO step {k}: map loss is {loss_sum / tail}")
            self.maps.append(detached(map_params))
            pool = push_points(self.map_kind, self.maps[-1:], pool, self.eps)[0]
            step_times.append(time.perf_counter() - start)
            map_losses.append(loss_sum / tail)
            duals.append(dual_sum / tail)
            self.progress(k, n_steps, f"JKO step {k}/{n_steps} loss {map_losses[-1]:.4g}")
            if k in self.steps:
                t = self.times[self.steps.index(k)]
                info = dict(self.info, step_times=step_times[:], map_losses=map_losses[:],
                            duals=duals[:], iters=iters)
                results[t] = self._result(k, info, ref, ratio_params)
        return results

    # results -------------------------------------------------------------------------
    def _log_density_fn(self, maps64: list[Params]) -> Callable[[np.ndarray], np.ndarray] | None:
        """The normalised log ρ^(k) at arbitrary points (None for a resnet map)."""
        task = self.task
        if self.map_kind == "resnet":
            return None
        if self.map_kind == "affine":
            w, b = compose_affine(maps64)
            _, logdet = np.linalg.slogdet(w)

            def log_density_affine(y: np.ndarray) -> np.ndarray:
                y = np.atleast_2d(np.asarray(y, dtype=np.float64))
                x0 = np.linalg.solve(w, (y - b).T).T
                return task.log_density_initial(x0) - logdet

            return log_density_affine

        def log_density_icnn(y: np.ndarray) -> np.ndarray:
            yt = self._tensor(np.atleast_2d(np.asarray(y, dtype=np.float64)), torch.float64)
            return pulled_back_log_density(maps64, yt, self.eps, task.log_density_initial,
                                           chunk=CHUNK).numpy()

        return log_density_icnn

    def _result(self, k: int, info: dict, ref, ratio_params: Params) -> SolverResult:
        task, kind = self.task, self.map_kind
        maps64 = [detached(m, torch.float64) for m in self.maps[:k]]
        has_density = kind != "resnet"
        if kind == "affine":
            w, _ = compose_affine(maps64)
            if not np.isfinite(np.linalg.slogdet(w)[1]):
                raise FloatingPointError("vwgf: the composed affine map is singular")

        def draw(n: int, rng: np.random.Generator):
            x0 = task.sample_initial(n, rng)
            l0 = (self._tensor(task.log_density_initial(x0), torch.float64)
                  if has_density else None)
            x, logp = push_points(kind, maps64, self._tensor(x0, torch.float64), self.eps, l0)
            return x.numpy(), None if logp is None else logp.numpy()

        log_density = self._log_density_fn(maps64)
        samples, _ = draw(int(self.params["n_samples"]), self.result_rng)
        diagnostics = {"final_dual": info["duals"][-1], "final_map_loss": info["map_losses"][-1]}
        if has_density and self.energy is not None:
            diagnostics.update(self._dual_check(draw, ref, ratio_params))
        info = dict(info, diagnostics=diagnostics)
        if has_density:
            return SolverResult(samples=samples, log_density=log_density, draw=draw,
                                info=info, law=IID_DENSITY)
        return SolverResult(samples=samples, draw=draw, info=info, law=IID)

    def _dual_check(self, draw, ref, ratio_params: Params) -> dict[str, float]:
        """How tight the last inner maximisation was, without any reference law.

        The dual (:meth:`InternalEnergy.dual`: KL(ρ‖Γ) for the entropy,
        ∫ρ^m/(m−1) for the porous medium) with the last ratio network at fresh
        draws of the returned law and of the step's reference, against the same
        quantity by Monte Carlo with the solver's own log-density (the change of
        variables): ``dual_gap`` = Monte Carlo − dual ≥ 0 up to noise; large when
        g has not caught up with the map.
        """
        x, logp = draw(CHECK_POINTS, self.check_rng)
        xt = self._tensor(x)
        with torch.no_grad():
            z = ref.sample(CHECK_POINTS, self.check_rng)
            dual = float(self.energy.dual(self.ratio_kind, ratio_params, xt, z, ref))
        exact = self.energy.monte_carlo(logp, xt, ref)
        return {"dual": dual, "dual_mc": exact, "dual_gap": exact - dual}
