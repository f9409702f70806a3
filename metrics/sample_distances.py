"""Density-free distances between a solver's law and the reference.

They judge every solver in any dimension (no KDE is involved), each on the
law it states (``result.law``):

- i.i.d. draws: the distance between the two *laws*, estimated without bias
  where the estimator allows (energy distance: U-statistics on both sides);
- a particle set: the distance between *that empirical measure* and the
  reference law (energy distance: the exact weighted V-statistic on the
  particles, an unbiased U-statistic on the reference side). No particle set
  scores below 0, the exact law's expected value; N i.i.d. draws of the exact
  law, taken as a particle set, score E|Y − Y'|·Σw² = E|Y − Y'|/N in
  expectation — reported as the row's ``energy_floor``.

Both sides' reference halves come from :class:`metrics.base.ReferenceDraws`
streams that every solver at the same (task, seed, t) shares.
"""
from __future__ import annotations

import numpy as np

from metrics.base import (Metric, MetricValue, SolverSample, ensure_draws, has_samples,
                          solver_sample)

N_ENERGY = 4096
N_SLICED = 8192
N_PROJECTIONS = 256
#: rows of a distance block computed at once (~8 MB of float64 at 4096 columns: cache-sized)
CHUNK = 256


def _distance_block(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray
                    ) -> np.ndarray:
    """‖a_i − b_j‖ for a block, from ‖a‖² + ‖b‖² − 2aᵀb (clipped at 0 before the root)."""
    d = a @ b.T
    d *= -2.0
    d += b_sq
    d += a_sq[:, None]
    np.maximum(d, 0.0, out=d)
    return np.sqrt(d, out=d)


def _single(a: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Points centred on ``centre`` in float32, and their squared norms."""
    a = (a - centre).astype(np.float32)
    return a, np.einsum("ij,ij->i", a, a)


def _sums_1d(points: np.ndarray, atoms: np.ndarray, weights: np.ndarray | None = None
             ) -> np.ndarray:
    """Σ_i w_i |atoms_i − p| for every point p (1-D, exact, O((n + m) log n) by sorting)."""
    order = np.argsort(atoms, kind="stable")
    sorted_atoms = atoms[order]
    w = np.ones_like(atoms) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    mass = np.concatenate(([0.0], np.cumsum(w)))
    moment = np.concatenate(([0.0], np.cumsum(w * sorted_atoms)))
    k = np.searchsorted(sorted_atoms, points, side="left")
    below = points * mass[k] - moment[k]
    above = (moment[-1] - moment[k]) - points * (mass[-1] - mass[k])
    return below + above


def distance_sums(a: np.ndarray, b: np.ndarray, a_weights: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Row sums ``(n,)`` and ``a_weights``-weighted column sums ``(m,)`` of ‖a_i − b_j‖.

    One matrix product per block of rows, so the n × m distances are never all
    in memory; in 1-D the sums are exact and come from sorting instead. Single precision with double accumulation, on points centred
    together: a distance's rounding is ~1e-7 relative (~3e-4 absolute for the
    rare pairs closer than that), the sums agree with float64 to ~1e-9
    relative, and the blocks run twice as fast. Unweighted column sums when
    ``a_weights`` is None.
    """
    if a.shape[1] == 1:  # exact, by sorting
        return _sums_1d(a[:, 0], b[:, 0]), _sums_1d(b[:, 0], a[:, 0], a_weights)
    centre = b.mean(axis=0)
    (a32, a_sq), (b32, b_sq) = _single(a, centre), _single(b, centre)
    rows = np.empty(a.shape[0])
    cols = np.zeros(b.shape[0])
    w32 = None if a_weights is None else a_weights.astype(np.float32)
    for start in range(0, a.shape[0], CHUNK):
        block = slice(start, start + CHUNK)
        d = _distance_block(a32[block], b32, a_sq[block], b_sq)
        rows[block] = d.sum(1, dtype=np.float64)
        cols += d.sum(0, dtype=np.float64) if w32 is None else (w32[block] @ d).astype(np.float64)
    return rows, cols


def self_distance_sums(x: np.ndarray, weights: np.ndarray | None = None
                       ) -> tuple[np.ndarray, float]:
    """Row sums ``(n,)`` of ‖x_i − x_j‖ and, with ``weights``, Σ_ij w_i w_j ‖x_i − x_j‖.

    The matrix is symmetric: only the blocks on and right of the diagonal are
    computed (half the work of :func:`distance_sums` on (x, x)).
    """
    n = x.shape[0]
    if x.shape[1] == 1:  # exact, by sorting
        rows = _sums_1d(x[:, 0], x[:, 0])
        return rows, (0.0 if weights is None else
                      float(weights @ _sums_1d(x[:, 0], x[:, 0], weights)))
    x32, sq = _single(x, x.mean(axis=0))
    rows = np.zeros(n)
    w = None if weights is None else weights.astype(np.float64)
    total = 0.0
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        d = _distance_block(x32[start:stop], x32[start:], sq[start:stop], sq[start:])
        rows[start:stop] += d.sum(1, dtype=np.float64)
        beyond = d[:, stop - start:]
        rows[stop:] += beyond.sum(0, dtype=np.float64)
        if w is not None:
            total += float(w[start:stop] @ (d[:, :stop - start].astype(np.float64)
                                            @ w[start:stop]))
            total += 2.0 * float(w[start:stop] @ (beyond.astype(np.float64) @ w[stop:]))
    return rows, total


def reference_terms(y: np.ndarray) -> dict[str, np.ndarray]:
    """The reference-only half of the energy statistic: row sums of ‖y_l − y_l'‖."""
    return {"y": y, "rows": self_distance_sums(y)[0]}


def energy_estimate(x: SolverSample, y: np.ndarray, y_rows: np.ndarray) -> MetricValue:
    """Energy distance 2E|X−Y| − E|X−X'| − E|Y−Y'| with its jackknife standard error.

    Parameters
    ----------
    x : SolverSample
        ``exact``: the particle set itself, within-term Σ w_i w_j |x_i − x_j|
        (V-statistic: the distance of the empirical measure); otherwise i.i.d.
        draws, within-term a U-statistic (unbiased for the law).
    y : ndarray (m, d)
        i.i.d. reference draws; ``y_rows`` their distance row sums.

    Returns
    -------
    MetricValue
        ``se`` by the two-sample jackknife (leave one x or one y out; over y
        only for an exact particle set, which carries no sampling noise).
        Under the null the statistic is degenerate and the jackknife is
        conservative (it overstates the error).
    """
    n, m = x.x.shape[0], y.shape[0]
    w = x.weights
    xy_rows, xy_cols = distance_sums(x.x, y, w)     # xy_cols[l] = Σ_k w_k |x_k − y_l|
    cross = float(xy_cols.sum()) / m
    s_yy = float(y_rows.sum())
    within_y = s_yy / (m * (m - 1))
    if x.exact:
        xx_rows, within_x = None, self_distance_sums(x.x, w)[1]
    else:
        xx_rows, _ = self_distance_sums(x.x)
        within_x = float(xx_rows.sum()) / (n * (n - 1))
    value = 2.0 * cross - within_x - within_y
    # leave one reference draw out
    cross_l = (m * cross - xy_cols) / (m - 1)
    within_y_l = (s_yy - 2.0 * y_rows) / ((m - 1) * (m - 2))
    t_y = 2.0 * cross_l - within_x - within_y_l
    var = (m - 1) / m * float(np.sum((t_y - t_y.mean()) ** 2))
    if xx_rows is not None:
        s_xx = float(xx_rows.sum())
        cross_k = (n * cross - xy_rows / m) / (n - 1)
        within_x_k = (s_xx - 2.0 * xx_rows) / ((n - 1) * (n - 2))
        t_x = 2.0 * cross_k - within_x_k - within_y
        var += (n - 1) / n * float(np.sum((t_x - t_x.mean()) ** 2))
    floor = within_y * x.weight_sq if x.weight_sq is not None else 0.0
    return MetricValue(float(value), float(np.sqrt(var)), "", float(floor))


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Energy distance between two i.i.d. samples ``x (n, d)``, ``y (m, d)`` (U-statistics).

    Unbiased for the distance between the laws they were drawn from.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    sample = SolverSample(x, np.full(x.shape[0], 1.0 / x.shape[0]), exact=False)
    return energy_estimate(sample, y, reference_terms(y)["rows"]).value


def energy_metric(result, reference, *, rng: np.random.Generator, draws=None) -> MetricValue:
    """Energy distance of the solver's law (or particle set) to the reference."""
    draws = ensure_draws(draws, reference, rng)
    x = solver_sample(result, N_ENERGY, rng)
    if x.x.shape[0] < 3:
        raise ValueError("the energy distance needs at least 3 samples")
    terms = draws.cached(f"energy-{N_ENERGY}",
                         lambda: reference_terms(draws.sample("energy", N_ENERGY)))
    return energy_estimate(x, terms["y"], terms["rows"])


# --- sliced Wasserstein-2 -------------------------------------------------------------------
def w2_sq_1d(x_sorted: np.ndarray, x_cum: np.ndarray, y_sorted: np.ndarray,
             y_cum: np.ndarray) -> float:
    """Exact W2² between two 1-D discrete laws given sorted atoms and cumulative weights.

    ∫₀¹ (F⁻¹(u) − G⁻¹(u))² du, summed over the merged breakpoints of both
    quantile functions (any sizes and weights).
    """
    u = np.union1d(x_cum, y_cum)
    u = u[(u > 0.0) & (u <= 1.0)]
    lengths = np.diff(np.concatenate(([0.0], u)))
    mid = u - 0.5 * lengths
    ix = np.minimum(np.searchsorted(x_cum, mid, side="left"), x_sorted.shape[0] - 1)
    iy = np.minimum(np.searchsorted(y_cum, mid, side="left"), y_sorted.shape[0] - 1)
    return float(np.sum(lengths * (x_sorted[ix] - y_sorted[iy]) ** 2))


def sliced_w2_estimate(x: SolverSample, y_sorted: np.ndarray, directions: np.ndarray
                       ) -> MetricValue:
    """Sliced W2 = sqrt(mean over directions of W2² of the projections).

    ``y_sorted (L, m)`` are the reference's sorted projections on the unit
    ``directions (L, d)``. The standard error covers the random directions only
    (delta method on the per-direction W2²); sampling bias, O(n^-1/2) upwards
    on both sides, is not in it.
    """
    proj = directions @ x.x.T                      # (L, n): contiguous rows sort fast
    order = np.argsort(proj, axis=1, kind="stable")
    x_sorted = np.take_along_axis(proj, order, axis=1)
    m = y_sorted.shape[1]
    y_cum = np.arange(1, m + 1) / m
    equal = np.ptp(x.weights) <= 1e-15
    if equal and x.x.shape[0] == m:
        per_direction = np.mean((x_sorted - y_sorted) ** 2, axis=1)
    else:
        cum = np.cumsum(x.weights[order], axis=1)
        cum[:, -1] = 1.0
        per_direction = np.array([w2_sq_1d(x_sorted[j], cum[j], y_sorted[j], y_cum)
                                  for j in range(directions.shape[0])])
    mean = float(per_direction.mean())
    value = float(np.sqrt(mean))
    n_dir = per_direction.shape[0]
    se_sq = float(per_direction.std(ddof=1)) / np.sqrt(n_dir) if n_dir > 1 else float("nan")
    se = se_sq / (2.0 * value) if value > 0 else float("nan")
    return MetricValue(value, se)


def sliced_w2_metric(result, reference, *, rng: np.random.Generator, draws=None) -> MetricValue:
    """Sliced W2 over 256 shared random directions; ≤ 8192 samples per side."""
    draws = ensure_draws(draws, reference, rng)
    x = solver_sample(result, N_SLICED, rng)

    def reference_projections():
        y = draws.sample("sliced", N_SLICED)
        directions = draws.rng("sliced-directions").standard_normal((N_PROJECTIONS, y.shape[1]))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return {"directions": directions, "y_sorted": np.sort(directions @ y.T, axis=1)}

    terms = draws.cached(f"sliced-{N_SLICED}-{N_PROJECTIONS}", reference_projections)
    return sliced_w2_estimate(x, terms["y_sorted"], terms["directions"])


def _applies(result, reference) -> bool:
    return has_samples(result) and reference.sample is not None


ENERGY = Metric(
    name="energy", version="2", fn=energy_metric, applies=_applies, lower_bound=0.0,
    label="energy distance", requires="samples and a reference sampler",
    description="energy distance, 4096 samples per side; i.i.d. laws: U-statistics, unbiased "
                "for the distance between the laws; particle sets: the distance of the "
                "empirical measure itself (weighted V-statistic), so N exact particles score "
                "E|Y-Y'|/N (the row's energy_floor); jackknife standard error")
SLICED_W2 = Metric(
    name="sliced_w2", version="2", fn=sliced_w2_metric, applies=_applies, lower_bound=0.0,
    default=False,
    label="sliced W2", requires="samples and a reference sampler",
    description="sliced W2, 256 random directions shared by all solvers, <= 8192 samples per "
                "side, exact 1-D W2 between the projected laws (weights kept); biased up by "
                "O(n^-1/2) sampling error on both sides; its standard error covers the "
                "directions only; computed on request (--metrics or a profile)")
