"""The free-energy contract: which terms a task's gradient flow has, and which a solver handles.

Every gfbench task is the Wasserstein gradient flow of a free energy

    F(ρ) = ∫V(x, t) dρ(x) + ½∬W(x − y) dρ(x) dρ(y) + β⁻¹ U(ρ),
    U(ρ) = ∫ρ log ρ  (entropy)   or   ∫ρ^m / (m − 1)  (porous medium, m > 1),

whose flow is ∂ρ/∂t = div(ρ ∇(V + W * ρ)) + β⁻¹ Δ(ρ)  (entropy) or β⁻¹ Δ(ρ^m)
(porous medium). The tasks of :mod:`tasks.base` only know V (``potential``)
and β, i.e. the terms {"potential", "entropy"}; a :class:`FreeEnergyTask`
declares its terms in a :class:`FreeEnergy` and adds the evaluators solvers
need for the others (V at a time t, W and ∇W).

This lives beside, not inside, tasks/base.py and solvers/base.py: a run id
hashes the source of every module a task or solver imports, and the existing
tasks and solvers must keep theirs. A solver states what it handles with a
class attribute ``supports`` (a frozenset of the term names below); a solver
without one handles {"potential", "entropy"}, which is what every solver was
written for. :func:`unsupported_terms` / :func:`skip_reason` give the runner
its skip decision right after ``solver.skip(task)``.

Terms
-----
``"potential"``       a confining or external potential V (``potential`` …)
``"time_dependent"``  V depends on t (``potential_t`` / ``grad_potential_t``);
                      always declared together with ``"potential"``
``"interaction"``     a pair potential W(z), even: W(z) = W(−z) (``interaction`` …)
``"entropy"``         U = ∫ρ log ρ, coefficient β⁻¹ (linear diffusion)
``"porous_medium"``   U = ∫ρ^m/(m − 1), coefficient β⁻¹ (nonlinear diffusion)

At most one internal energy; none at all (pure transport/aggregation) is
allowed by the contract though no task has it yet.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.base import Task

POTENTIAL = "potential"
TIME_DEPENDENT = "time_dependent"
INTERACTION = "interaction"
ENTROPY = "entropy"
POROUS_MEDIUM = "porous_medium"
#: every term the contract knows
ALL_TERMS = frozenset({POTENTIAL, TIME_DEPENDENT, INTERACTION, ENTROPY, POROUS_MEDIUM})
#: what a plain :class:`tasks.base.Task` is, and what a solver without ``supports`` handles
DEFAULT_TERMS = frozenset({POTENTIAL, ENTROPY})
#: the internal energies (mutually exclusive)
INTERNAL_ENERGIES = (ENTROPY, POROUS_MEDIUM)

#: float64 entries of one block of pairwise differences (rows × M × dim): 2²² = 32 MB,
#: so the pairwise sum's memory is bounded whatever N and D
PAIR_BLOCK = 2 ** 22


@dataclass(frozen=True)
class FreeEnergy:
    """The terms of a task's free energy and the internal energy's parameters.

    Parameters
    ----------
    terms : frozenset of str
        A subset of :data:`ALL_TERMS`.
    beta : float
        Inverse temperature: the internal energy is β⁻¹ U (β > 0).
    exponent : float or None
        m of the porous-medium energy ∫ρ^m/(m − 1) (m > 1); None otherwise.
    """

    terms: frozenset
    beta: float = 1.0
    exponent: float | None = None

    def __post_init__(self) -> None:
        terms = frozenset(self.terms)
        object.__setattr__(self, "terms", terms)
        unknown = terms - ALL_TERMS
        if unknown:
            raise ValueError(f"unknown free-energy term(s) {sorted(unknown)}; "
                             f"known: {sorted(ALL_TERMS)}")
        if TIME_DEPENDENT in terms and POTENTIAL not in terms:
            raise ValueError("a time-dependent free energy needs the 'potential' term")
        if ENTROPY in terms and POROUS_MEDIUM in terms:
            raise ValueError("at most one internal energy: 'entropy' or 'porous_medium'")
        if not (np.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"beta must be a positive number, got {self.beta!r}")
        if (POROUS_MEDIUM in terms) != (self.exponent is not None):
            raise ValueError("the porous-medium term needs its exponent m, and only it")
        if self.exponent is not None and not self.exponent > 1:
            raise ValueError(f"porous-medium exponent m must be > 1, got {self.exponent!r}")

    @property
    def internal(self) -> str | None:
        """``"entropy"``, ``"porous_medium"`` or None."""
        for kind in INTERNAL_ENERGIES:
            if kind in self.terms:
                return kind
        return None


class FreeEnergyTask(Task):
    """A task whose flow may have a time-dependent V, an interaction W or a porous-medium U.

    Subclasses set ``self.free_energy`` in their constructor and override the
    evaluators of the terms they declare. All arrays are float64 (torch:
    the input's dtype and device); ``x`` and ``z`` are ``(n, dim)``.

    The plain :class:`Task` API stays meaningful: ``potential`` /
    ``grad_potential`` are V at t = 0 (so a solver that ignores the
    ``"time_dependent"`` term sees the starting potential; such a solver is
    skipped by :func:`unsupported_terms` anyway) and ``beta`` is the
    coefficient of the internal energy.
    """

    free_energy: FreeEnergy

    # --- V(x, t) ---------------------------------------------------------------
    def potential_t(self, x: np.ndarray, t: float) -> np.ndarray:
        """V(x, t) -> ``(n,)``; a time-independent task ignores ``t``."""
        return self.potential(x)

    def grad_potential_t(self, x: np.ndarray, t: float) -> np.ndarray:
        """∇ₓV(x, t) -> ``(n, dim)``."""
        return self.grad_potential(x)

    def potential_t_torch(self, x: "torch.Tensor", t: float) -> "torch.Tensor":  # noqa: F821
        """V(x, t) for a torch tensor ``(n, dim)`` -> ``(n,)``, differentiable in ``x``."""
        return self.potential_torch(x)

    def grad_potential_t_torch(self, x: "torch.Tensor", t: float) -> "torch.Tensor":  # noqa: F821
        """∇ₓV(x, t) for a torch tensor -> ``(n, dim)``."""
        return self.grad_potential_torch(x)

    # --- W(z) --------------------------------------------------------------------
    def interaction(self, z: np.ndarray) -> np.ndarray:
        """W(z) at differences ``z (n, dim)`` -> ``(n,)`` (0 without an interaction)."""
        return np.zeros(np.shape(z)[0])

    def grad_interaction(self, z: np.ndarray) -> np.ndarray:
        """∇W(z) -> ``(n, dim)`` (odd in z, as W is even)."""
        return np.zeros(np.shape(z), dtype=np.float64)

    def interaction_torch(self, z: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """W(z) for a torch tensor ``(n, dim)`` -> ``(n,)``, differentiable."""
        return z.new_zeros(z.shape[0])

    def grad_interaction_torch(self, z: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
        """∇W(z) for a torch tensor -> ``(n, dim)``."""
        return z.new_zeros(z.shape)

    def interaction_field(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(∇W * μ)(x) ``(n, dim)`` for the empirical measure μ of ``y (M, dim)``.

        The pairwise sum by default (:func:`mean_field_gradient`, O(n·M));
        a task whose W allows an exact shortcut (quadratic W: B(x − ȳ))
        overrides it with the same values up to rounding.
        """
        return mean_field_gradient(self.grad_interaction, x, y)


def free_energy_of(task: Any) -> FreeEnergy:
    """The task's :class:`FreeEnergy`; a plain task is V + β⁻¹∫ρ log ρ."""
    declared = getattr(task, "free_energy", None)
    if isinstance(declared, FreeEnergy):
        return declared
    return FreeEnergy(DEFAULT_TERMS, beta=float(getattr(task, "beta", 1.0)))


def free_energy_terms(task: Any) -> frozenset:
    """The term names of ``task``'s free energy (a plain task: {"potential", "entropy"})."""
    declared = getattr(task, "free_energy", None)
    return declared.terms if isinstance(declared, FreeEnergy) else DEFAULT_TERMS


def solver_supports(solver_cls: Any) -> frozenset:
    """The terms a solver class (or instance) handles: its ``supports``, else the default."""
    return frozenset(getattr(solver_cls, "supports", DEFAULT_TERMS))


def unsupported_terms(task: Any, solver_cls: Any) -> tuple[str, ...]:
    """The terms of ``task`` that ``solver_cls`` does not handle, sorted (empty: it can run)."""
    return tuple(sorted(free_energy_terms(task) - solver_supports(solver_cls)))


def skip_reason(task: Any, solver_cls: Any) -> str:
    """One line saying why the solver cannot run the task ("" when it can)."""
    missing = unsupported_terms(task, solver_cls)
    if not missing:
        return ""
    solver = getattr(solver_cls, "name", getattr(solver_cls, "__name__", "solver"))
    return (f"{solver} does not handle the {', '.join(missing)} term"
            f"{'s' if len(missing) > 1 else ''} of the free energy of task "
            f"{getattr(task, 'name', '?')!r}")


def mean_field_gradient(grad_w: Any, x: np.ndarray, y: np.ndarray,
                        block: int = PAIR_BLOCK) -> np.ndarray:
    """(∇W * μ)(xᵢ) = (1/M) Σⱼ ∇W(xᵢ − yⱼ) for the empirical measure μ of ``y``.

    Parameters
    ----------
    grad_w : callable
        ``grad_w(z (k, dim)) -> (k, dim)``, e.g. a task's ``grad_interaction``.
    x : ndarray (n, dim) float64
        Where the field is evaluated.
    y : ndarray (M, dim) float64
        The particles the field comes from (``x`` itself for a particle system;
        the j = i term is ∇W(0) = 0 for an even, differentiable W).
    block : int
        Entries of one block of differences (rows of ``x`` × M × dim): memory is
        O(block), time O(n · M · dim) plus ``grad_w``'s cost.

    Returns
    -------
    ndarray (n, dim) float64
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, dim = x.shape
    chunk = max(1, block // max(1, y.shape[0] * dim))
    out = np.empty((n, dim), dtype=np.float64)
    for start in range(0, n, chunk):
        rows = x[start:start + chunk]
        diff = (rows[:, None, :] - y[None, :, :]).reshape(-1, dim)
        out[start:start + chunk] = np.asarray(grad_w(diff), dtype=np.float64) \
            .reshape(rows.shape[0], y.shape[0], dim).mean(axis=1)
    return out
