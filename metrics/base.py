"""The metric contract.

A metric is a plain function ``fn(result, reference, *, rng, draws) -> value``
with a name and a version. It judges the law a solver states in
``result.law`` (see :class:`solvers.base.SolverResult`) against the task's
reference law:

- on i.i.d. draws (``"iid"``, ``"iid_density"``) a sample-distance metric may
  use fresh draws and an unbiased estimator of the distance between the two
  laws;
- on a particle set (``"particles"``) it measures the distance between *that
  empirical measure* and the reference, so N particles can never score below
  the exact law in expectation.

``fn`` returns a float, a ``(value, standard_error)`` pair or a
:class:`MetricValue`. The standard error is the Monte Carlo error of the
estimate given the solver's output (0 for a deterministic quantity). Values
keep their meaning: ``+inf`` is a real infinite divergence (a law that misses
reference mass), NaN means "does not apply / could not be computed" and always
comes with a note saying which.

``draws`` (:class:`ReferenceDraws`) hands out the reference's samples and the
terms computed from them. Its streams depend only on (task, task parameters,
seed, time), so every solver of a grid is judged against the same reference
draws (paired comparisons), and a runner can share those terms between runs.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

MetricFn = Callable[..., Any]


@dataclass(frozen=True)
class MetricValue:
    """One metric's outcome for one result.

    Parameters
    ----------
    value : float
        The estimate; ``+inf``/``-inf`` are kept, NaN means not computed.
    se : float
        Monte Carlo standard error of ``value`` given the solver's output
        (0 when exact, NaN when unknown).
    note : str
        Why ``value`` is NaN or infinite (empty otherwise).
    floor : float
        Optional: the score the exact law would get at the solver's sample
        size (a particle set's noise floor); NaN when not defined.
    parts : mapping of str to float
        Estimates behind ``value`` worth keeping beside it (each KL direction
        and its error, a density's estimated mass); stored as
        ``<metric>_<part>`` columns.
    invalid : str
        Non-empty when the solver's output fails a check the estimator relies
        on (a density that does not integrate to 1, a divergence below 0 beyond
        noise): the reason. Such a value is kept for inspection but never ranked.
    """

    value: float
    se: float = float("nan")
    note: str = ""
    floor: float = float("nan")
    parts: Mapping[str, float] = field(default_factory=dict)
    invalid: str = ""


@dataclass(frozen=True)
class Metric:
    """A named, versioned metric.

    Parameters
    ----------
    name : str
        Column name in result rows.
    version : str
        Bump when the estimator changes (the module's source is part of the
        run id as well, so edits invalidate cached runs on their own).
    fn : callable
        ``fn(result, reference, *, rng, draws)``; see the module docstring.
    applies : callable
        ``applies(result, reference) -> bool``.
    lower_is_better : bool
        Direction used by the leaderboard and ``compare``.
    description : str
        One line for ``gfbench list`` and the report, stating the estimator's
        bias and noise.
    label : str
        Name in words for tables and figures ("energy distance").
    lower_bound : float or None
        The best value the estimated quantity can take (0 for a divergence),
        which the exact law attains; None when there is none. The leaderboard
        never ranks an entry above one that is within noise of this bound.
    requires : str
        What ``applies`` checks, in words ("a solver density"): the note of a
        row where the metric does not apply.
    default : bool
        Computed when a run does not list its metrics. Biased or expensive
        diagnostics (KDE SymKL, sliced W2) are computed on request: the
        profiles that compare with the original study ask for them.
    """

    name: str
    version: str
    fn: MetricFn
    applies: Callable[[Any, Any], bool]
    lower_is_better: bool = True
    description: str = ""
    label: str = ""
    lower_bound: float | None = None
    requires: str = ""
    default: bool = True

    def __call__(self, result: Any, reference: Any, *, rng: np.random.Generator,
                 draws: "ReferenceDraws | None" = None) -> MetricValue:
        """Evaluate, never raising: failures become NaN with a note."""
        draws = ensure_draws(draws, reference, rng)
        kwargs = {"rng": rng, "draws": draws} if accepts_draws(self.fn) else {"rng": rng}
        try:
            out = self.fn(result, reference, **kwargs)
        except (ValueError, FloatingPointError, np.linalg.LinAlgError, OverflowError,
                ZeroDivisionError, MemoryError) as exc:
            return MetricValue(float("nan"), note=f"not computed: {type(exc).__name__}: {exc}"[:300])
        value = as_metric_value(out)
        if np.isnan(value.value) and not value.note:
            value = replace(value, note="not computed: NaN estimate")
        elif np.isinf(value.value) and not value.note:
            value = replace(value, note="infinite")
        return value

    def not_applicable(self) -> MetricValue:
        """The value of a row this metric does not judge."""
        return MetricValue(float("nan"), note="not applicable: needs " + (self.requires or
                                                                         "other output"))

    @property
    def title(self) -> str:
        """``label`` or, without one, the name."""
        return self.label or self.name


def as_metric_value(out: Any) -> MetricValue:
    """A metric function's return value (float, pair or MetricValue) as a MetricValue."""
    if isinstance(out, MetricValue):
        return MetricValue(float(out.value), float(out.se), out.note, float(out.floor),
                           {str(k): float(v) for k, v in out.parts.items()}, str(out.invalid))
    if isinstance(out, tuple):
        return MetricValue(float(out[0]), float(out[1]))
    return MetricValue(float(out))


# --- reference draws shared between runs -----------------------------------------------
class ReferenceDraws:
    """Samples of one reference law and terms computed from them.

    Each named stream is drawn from ``seed`` and the stream's name only, so a
    stream is the same for every solver judged at the same (task, seed, t);
    metrics pick their own stream names. ``cached(key, compute)`` memoises
    arrays derived from the streams (e.g. the reference-only half of a
    U-statistic) in memory and, when ``directory`` is given, on disk so that
    other run processes of the same grid reuse them (files are written
    atomically; an unreadable one is recomputed).

    Parameters
    ----------
    reference : Reference
        The law to draw from (``reference.sample``).
    seed : numpy.random.SeedSequence
        Root of every stream.
    directory : path or None
        Shared cache directory (None: memory only).
    key : str
        Identifies the reference among others in ``directory`` (task, task
        parameters and code, seed, t).
    """

    def __init__(self, reference: Any, seed: np.random.SeedSequence,
                 directory: str | Path | None = None, key: str = "") -> None:
        self.reference, self.seed = reference, seed
        self.directory = Path(directory) if directory else None
        self.key = key
        self._memory: dict[str, dict[str, np.ndarray]] = {}

    def rng(self, stream: str) -> np.random.Generator:
        """A generator for ``stream``, the same wherever this reference is judged."""
        tag = int.from_bytes(hashlib.sha256(stream.encode()).digest()[:4], "little")
        return np.random.default_rng(np.random.SeedSequence(self.seed.entropy,
                                                            spawn_key=(*self.seed.spawn_key, tag)))

    def sample(self, stream: str, n: int) -> np.ndarray:
        """``n`` reference samples ``(n, dim)`` float64 of ``stream`` (memoised in memory;
        the terms a metric derives from them go through :meth:`cached`)."""
        name = f"sample:{stream}-{n}"
        if name not in self._memory:
            self._memory[name] = {"x": np.asarray(self.reference.sample(n, self.rng(stream)),
                                                  dtype=np.float64)}
        return self._memory[name]["x"]

    def cached(self, name: str, compute: Callable[[], Mapping[str, np.ndarray]]
               ) -> dict[str, np.ndarray]:
        """``compute()`` (a dict of arrays) memoised under ``name``."""
        if name in self._memory:
            return self._memory[name]
        path = self._path(name)
        value = _load(path) if path is not None else None
        if value is None:
            value = {k: np.asarray(v) for k, v in compute().items()}
            if path is not None:
                _save(path, value)
        self._memory[name] = value
        return value

    def _path(self, name: str) -> Path | None:
        if self.directory is None:
            return None
        digest = hashlib.sha256(f"{self.key}|{name}".encode()).hexdigest()[:24]
        return self.directory / f"{digest}.npz"


_CHECKSUM = "__sha256__"


def _digest(value: Mapping[str, np.ndarray]) -> np.ndarray:
    """sha256 over the arrays' names, dtypes, shapes and bytes (as a uint8 array)."""
    digest = hashlib.sha256()
    for key in sorted(value):
        array = np.ascontiguousarray(value[key])
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return np.frombuffer(digest.digest(), dtype=np.uint8)


def _load(path: Path) -> dict[str, np.ndarray] | None:
    """A cached entry, or None when it is missing, unreadable or fails its checksum (a file
    zeroed or edited in place is recomputed, never trusted)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            value = {k: data[k] for k in data.files if k != _CHECKSUM}
            stored = data[_CHECKSUM] if _CHECKSUM in data.files else None
    except (OSError, ValueError, EOFError, KeyError):
        return None
    if stored is None or not np.array_equal(stored, _digest(value)):
        return None
    return value


def _save(path: Path, value: Mapping[str, np.ndarray]) -> None:
    """Best effort: a cache that cannot be written is only a slower run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".npz.tmp")
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **value, **{_CHECKSUM: _digest(value)})
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def ensure_draws(draws: "ReferenceDraws | None", reference: Any,
                 rng: np.random.Generator) -> "ReferenceDraws":
    """``draws``, or private reference draws when a metric function is called on its own."""
    if draws is not None:
        return draws
    return ReferenceDraws(reference, np.random.SeedSequence(int(rng.integers(2**63))))


# --- the solver's side ---------------------------------------------------------------------
@dataclass
class SolverSample:
    """What a sample-based metric sees of a solver's law.

    ``x (n, dim)`` with ``weights (n,)``; ``exact`` says whether ``x`` is the
    whole particle set (the empirical measure itself: within-sample terms are
    V-statistics with these weights) or i.i.d. draws (from the law, or with
    replacement from a particle set: within-sample terms are U-statistics,
    unbiased for the law they were drawn from). ``weight_sq`` is Σ w_i² of a
    particle set (1/N for N equal weights; None for i.i.d. laws): N exact
    particles' expected distance to the law scales with it.
    """

    x: np.ndarray
    weights: np.ndarray
    exact: bool
    weight_sq: float | None = None
    log_density: np.ndarray | None = field(default=None, repr=False)


def solver_sample(result: Any, n: int, rng: np.random.Generator,
                  with_density: bool = False) -> SolverSample:
    """At most ``n`` points of the solver's law, as its ``law`` says.

    i.i.d. laws: ``n`` fresh draws (with their log-density if asked).
    Particle sets of at most ``n`` particles: all of them with their weights
    (``exact``); larger ones: ``n`` draws with replacement by weight, i.e.
    i.i.d. draws of the empirical measure.
    """
    if result.law in ("iid", "iid_density"):
        x, logp = result.draw(n, rng)
        x = np.asarray(x, dtype=np.float64)
        check_samples(x)
        logp = None if logp is None or not with_density else np.asarray(logp, dtype=np.float64)
        return SolverSample(x, np.full(x.shape[0], 1.0 / x.shape[0]), False, None, logp)
    x = np.asarray(result.samples, dtype=np.float64)
    check_samples(x)
    weights = result.weights if result.weights is not None \
        else np.full(x.shape[0], 1.0 / x.shape[0])
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise ValueError("particle weights are not non-negative and finite")
    weight_sq = float(np.sum(weights * weights))
    if x.shape[0] <= n:
        return SolverSample(x, weights, True, weight_sq)
    rows = rng.choice(x.shape[0], size=n, replace=True, p=weights)
    return SolverSample(x[rows], np.full(n, 1.0 / n), False, weight_sq)


def check_samples(x: np.ndarray) -> None:
    """Raise ValueError unless ``x`` is a non-empty finite 2-D array."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"samples must be a non-empty (n, dim) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("non-finite samples")


def has_samples(result: Any) -> bool:
    """Whether the result's law can be sampled or is a particle set."""
    return result.law in ("iid", "iid_density") or result.samples is not None


def accepts_draws(fn: MetricFn) -> bool:
    """Whether a metric function takes the ``draws`` keyword (plugins may not)."""
    try:
        return "draws" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def finite_samples(x: np.ndarray | None) -> bool:
    """True when ``x`` is a non-empty finite 2-D sample array."""
    return x is not None and x.ndim == 2 and x.shape[0] > 0 and bool(np.isfinite(x).all())


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``x``, drawn without replacement when there are more."""
    if x.shape[0] <= n:
        return x
    return x[rng.choice(x.shape[0], size=n, replace=False)]
