"""From per-run rows to per-configuration summaries.

Shared by the report, the leaderboard and ``compare``: it names the metric
columns, labels configurations readably (only what varies), pools the
parameters that merely index replicates (a data split) with the seeds, and
reduces replicates to a median with an interval that uses both the spread
over replicates and each run's own Monte Carlo standard error.
"""
from __future__ import annotations

import json
import math
import re
from typing import Iterable

import numpy as np
import pandas as pd

from execution import registry
from execution.store import note_for

#: columns identifying one configuration (one cell of the grid, all seeds)
CONFIG_KEYS = ["task", "task_config", "solver", "solver_config", "t"]
FAILED_STATUSES = ("error", "timeout", "oom", "diverged")
#: task parameters never shown in labels (where data live is not what was run)
HIDDEN_TASK_PARAMS = ("data_dir",)


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Registered metric names that have at least one non-NaN value in ``frame``."""
    names = [name for name in registry.index()["metrics"] if name in frame.columns]
    return [name for name in names if pd.to_numeric(frame[name], errors="coerce").notna().any()]


def lower_is_better(metric: str) -> bool:
    """Direction of ``metric`` (unknown columns such as timings: lower is better)."""
    info = registry.metric_info(metric)
    return info["lower_is_better"] if info else True


def metric_title(metric: str) -> str:
    """A metric's name in words ("energy distance"); the column name when unknown."""
    info = registry.metric_info(metric)
    return info["label"] if info else metric


def metric_lower_bound(metric: str) -> float | None:
    """The best value ``metric`` can take (0 for divergences), if it has one."""
    info = registry.metric_info(metric)
    return info["lower_bound"] if info else None


def task_info(task: str) -> dict:
    """A built-in task's index entry ({} for a plugin task)."""
    return registry.index()["tasks"].get(task, {})


# --- values that cannot be ranked -------------------------------------------------------
#: a value further than this many standard errors (plus BOUND_SLACK) below its metric's lower
#: bound is impossible. Generous on purpose: an unbiased estimator's standard error is itself
#: estimated, and for the energy U-statistic it is smallest exactly when the value is most
#: negative (the oracle read −5.8e-4 ± 1.3e-4 on one seed of twenty, 4.5 "standard errors")
BOUND_Z, BOUND_SLACK = 8.0, 1e-3
#: no metric of a law takes values this large: a finite one of this size is a broken output
ABSURD = 1e100


def invalid_reasons(frame: pd.DataFrame, metric: str) -> pd.Series:
    """Per row, why its ``metric`` value cannot be ranked ('' when it can).

    A value cannot be ranked when the metric marked it invalid (its note
    starts with ``invalid``: a density that does not integrate to 1), when it
    is impossible for the metric (−∞ for a lower-is-better metric, +∞ for a
    higher-is-better one, a value below the metric's lower bound by more than
    :data:`BOUND_Z` standard errors plus :data:`BOUND_SLACK`, a finite magnitude
    above :data:`ABSURD`),
    or when it should exist and does not (NaN with a note ``not computed``).
    ``+∞`` for a divergence is a result, not an invalid value: it ranks last.
    Rows that are not ``ok`` get '' (their status says what happened).
    """
    reasons = pd.Series("", index=frame.index, dtype=object)
    if metric not in frame or frame.empty:
        return reasons
    values = pd.to_numeric(frame[metric], errors="coerce").to_numpy(float)
    se = pd.to_numeric(frame.get(f"{metric}_se", pd.Series(np.nan, index=frame.index)),
                       errors="coerce").to_numpy(float)
    notes = frame["metric_notes"] if "metric_notes" in frame \
        else pd.Series("", index=frame.index)
    asked = frame["metric_versions"].map(lambda v: _lists(v, metric)).to_numpy() \
        if "metric_versions" in frame else np.zeros(len(frame), bool)
    ok = (frame["status"] == "ok").to_numpy() if "status" in frame else np.ones(len(frame), bool)
    lower = lower_is_better(metric)
    bound = metric_lower_bound(metric)
    for i, (value, error, note) in enumerate(zip(values, se, notes)):
        if not ok[i]:
            continue
        text = note_for(note, metric)
        if text.startswith("invalid"):
            reasons.iloc[i] = text
        elif np.isnan(value):
            if text.startswith("not computed"):
                reasons.iloc[i] = text
            elif asked[i] and not text.startswith("not applicable"):
                reasons.iloc[i] = "not computed: no value and no reason for a metric the run " \
                                  "asked for"
        elif np.isinf(value) and (value < 0) == lower:
            reasons.iloc[i] = f"impossible value {format_number(value)}"
        elif np.isfinite(value) and abs(value) > ABSURD:
            reasons.iloc[i] = f"absurd value {format_number(value)}"
        elif bound is not None and lower and np.isfinite(value) \
                and value < bound - BOUND_Z * (error if np.isfinite(error) else 0.0) \
                - BOUND_SLACK:
            reasons.iloc[i] = (f"{format_number(value)} is below the metric's lower bound "
                               f"{format_number(bound)} beyond noise (se "
                               f"{format_number(error)})")
    return reasons


def _lists(metric_versions: object, metric: str) -> bool:
    """Whether a row's ``metric_versions`` (JSON) names ``metric``: the run asked for it."""
    if isinstance(metric_versions, dict):
        return metric in metric_versions
    try:
        parsed = json.loads(metric_versions) if isinstance(metric_versions, str) else {}
    except ValueError:
        return False
    return isinstance(parsed, dict) and metric in parsed


def diagnostics_text(info: pd.Series) -> str:
    """A solver's own failure diagnostics over runs: ``ibp_loss=0.012, score_loss=3.1``.

    Read from each row's ``info`` JSON under ``"diagnostics"`` (what a solver
    reports about its own success: SCVM's self-consistency loss, SBTM's
    score-matching loss); numeric values, median over the rows; '' if none.
    """
    values: dict[str, list[float]] = {}
    for text in info.dropna():
        try:
            parsed = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            continue
        found = parsed.get("diagnostics") if isinstance(parsed, dict) else None
        for key, value in (found.items() if isinstance(found, dict) else ()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values.setdefault(str(key), []).append(float(value))
    return ", ".join(f"{key}={format_number(float(np.median(v)))}"
                     for key, v in sorted(values.items()))


def worst_value(metric: str) -> float:
    """The value a failed or invalid replicate takes in a ranking: +∞ in the worse direction."""
    return np.inf if lower_is_better(metric) else -np.inf


# --- labels ----------------------------------------------------------------------------
def varying_params(frame: pd.DataFrame, prefix: str, hidden: Iterable[str] = ()) -> list[str]:
    """Parameter columns (``prefix.*``) taking more than one value in ``frame``."""
    hidden = {f"{prefix}.{h}" for h in hidden}
    columns = [c for c in frame.columns if c.startswith(prefix + ".") and c not in hidden]
    return sorted(c for c in columns if frame[c].astype(str).nunique(dropna=False) > 1)


def _short_names(solver: str) -> dict[str, str]:
    return dict(registry.index()["solvers"].get(solver, {}).get("labels", {}))


def solver_labels(frame: pd.DataFrame) -> pd.Series:
    """``em(N=1000)``: the solver's name plus the parameters that vary, per task.

    Within each task, parameters a solver holds constant are left out (they
    stay in ``solver_config``), and long names use the solver's ``labels``
    abbreviations, so a label reads like the table it is in.
    """
    labels = pd.Series(index=frame.index, dtype=object)
    for (_, solver), part in frame.groupby(["task", "solver"], sort=True):
        keys = varying_params(part.dropna(axis=1, how="all"), "solver")
        if not keys:
            labels[part.index] = solver
            continue
        short = _short_names(solver)
        inner = part[keys].astype(str).apply(lambda r: ",".join(
            f"{short.get(k.split('.', 1)[1], k.split('.', 1)[1])}={_compact(v)}"
            for k, v in r.items()), axis=1)
        labels[part.index] = solver + "(" + inner + ")"
    return labels


def group_labels(frame: pd.DataFrame) -> pd.Series:
    """Task configuration without its replicate parameters: ``dim=4``, ``dataset=german``.

    Per task, only the parameters that vary are shown; the replicate
    parameters (``Task.replicate_parameters``, e.g. a random data split) and
    :data:`HIDDEN_TASK_PARAMS` are left out, so replicates share one group.
    """
    labels = pd.Series(index=frame.index, dtype=object)
    for task, part in frame.groupby("task", sort=True):
        hidden = tuple(task_info(task).get("replicate_parameters", ())) + HIDDEN_TASK_PARAMS
        keys = varying_params(part.dropna(axis=1, how="all"), "task", hidden)
        if not keys:
            labels[part.index] = "all"
            continue
        labels[part.index] = part[keys].astype(str).apply(lambda r: ", ".join(
            f"{k.split('.', 1)[1]}={_compact(v)}" for k, v in r.items()), axis=1)
    return labels


def replicate_keys(frame: pd.DataFrame) -> pd.Series:
    """One key per replicate of a configuration: the seed and any replicate parameters."""
    keys = pd.Series("seed=" + frame["seed"].astype(str), index=frame.index)
    for task, part in frame.groupby("task", sort=False):
        for name in task_info(task).get("replicate_parameters", ()):
            column = f"task.{name}"
            if column in part:
                keys[part.index] = keys[part.index] + f",{name}=" + part[column].astype(str)
    return keys


def _compact(value: str) -> str:
    """``10000.0`` → ``10000``, ``0.001`` → ``1e-3``: labels read as typed."""
    try:
        number = float(value)
    except ValueError:
        return value
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    if 0 < abs(number) < 1e-2:
        mantissa, exponent = f"{number:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return value


# --- replicates to a score --------------------------------------------------------------
def bootstrap_median_interval(values: np.ndarray, se: np.ndarray | None = None,
                              level: float = 0.9, n_boot: int = 2000, seed: int = 0,
                              lower_bound: float | None = None) -> tuple[float, float]:
    """Interval of the median over replicates, by resampling them and their MC noise.

    Each bootstrap draw resamples the replicates with replacement and adds to
    each value a normal draw with its own standard error, so a single
    replicate gets the interval of its Monte Carlo error (never a zero width
    unless the value is exact) and many replicates get their spread. Infinite
    values stay infinite; an unknown standard error counts as infinitely
    wide. The interval is cut at ``lower_bound`` (the estimand cannot lie
    below it). Deterministic (fixed ``seed``).
    """
    values = np.asarray(values, dtype=np.float64)
    se = np.zeros_like(values) if se is None else np.asarray(se, dtype=np.float64)
    keep = ~np.isnan(values)
    values, se = values[keep], np.where(np.isnan(se[keep]), np.inf, se[keep])
    if values.size == 0:
        return float("nan"), float("nan")
    medians = _bootstrap_medians(values, se, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    # order statistics (outward), not interpolations: medians may be infinite
    low = np.quantile(medians, alpha, method="lower")
    high = np.quantile(medians, 1.0 - alpha, method="higher")
    if lower_bound is not None:
        low, high = max(low, lower_bound), max(high, lower_bound)
    return float(low), float(high)


def _bootstrap_medians(values: np.ndarray, se: np.ndarray, n_boot: int, seed: int
                       ) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.integers(values.size, size=(n_boot, values.size))
    noise = rng.standard_normal((n_boot, values.size))
    with np.errstate(invalid="ignore"):
        jitter = np.where(np.isfinite(se[rows]), se[rows] * noise,
                          np.where(noise >= 0, np.inf, -np.inf))
        draws = np.where(np.isinf(values[rows]), values[rows], values[rows] + jitter)
        return np.median(draws, axis=1)


def summarise(frame: pd.DataFrame, metrics: Iterable[str],
              keys: list[str] | None = None) -> pd.DataFrame:
    """Median, quartiles, typical standard error and counts of each metric per configuration.

    Parameters
    ----------
    frame : DataFrame
        Per-run rows (all statuses).
    metrics : iterable of str
        Metric (or timing) columns to summarise over ``ok`` rows.
    keys : list of str, optional
        Grouping columns; default :data:`CONFIG_KEYS` plus ``label``.

    Returns
    -------
    DataFrame
        One row per configuration with ``n_ok``, ``n_failed``, ``n_skipped`` and
        ``<metric>_median``, ``_q25``, ``_q75``, ``_se`` (median of the runs'
        standard errors), ``_n_inf`` and ``_n_invalid`` columns; invalid values
        (:func:`invalid_reasons`) are counted, not summarised.
    """
    keys = keys or [k for k in CONFIG_KEYS + ["label"] if k in frame.columns]
    out = []
    for key, part in frame.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        ok = part[part["status"] == "ok"]
        row.update(n_ok=len(ok), n_failed=int(part["status"].isin(FAILED_STATUSES).sum()),
                   n_skipped=int((part["status"] == "skipped").sum()))
        for metric in metrics:
            invalid = invalid_reasons(ok, metric) != "" if metric in ok.columns \
                else pd.Series(False, index=ok.index)
            values = pd.to_numeric(ok.loc[~invalid, metric], errors="coerce").dropna() \
                if metric in ok.columns else pd.Series(dtype=float)
            se_col = f"{metric}_se"
            se = pd.to_numeric(ok[se_col], errors="coerce").dropna() \
                if se_col in ok.columns else pd.Series(dtype=float)
            quantiles = _quantiles(values.to_numpy(float)) if not values.empty else None
            row.update({
                f"{metric}_median": float(quantiles[0.5]) if quantiles is not None else np.nan,
                f"{metric}_q25": float(quantiles[0.25]) if quantiles is not None else np.nan,
                f"{metric}_q75": float(quantiles[0.75]) if quantiles is not None else np.nan,
                f"{metric}_se": float(se.median()) if not se.empty else np.nan,
                f"{metric}_n_inf": int(np.isinf(values).sum()),
                f"{metric}_n_invalid": int(invalid.sum())})
        out.append(row)
    return pd.DataFrame(out)


def _quantiles(values: np.ndarray) -> dict[float, float]:
    """Quartiles and median that keep infinities: [∞, ∞, ∞] has median ∞, not NaN.

    Linear interpolation, as pandas; where that meets an infinite neighbour
    (NaN from ∞ − ∞ or 0·∞), the limit of the interpolation is taken: the
    lower order statistic at a whole position, else the infinite one.
    """
    ordered = np.sort(values)
    out = {}
    for q in (0.25, 0.5, 0.75):
        position = q * (ordered.size - 1)
        low, high = ordered[int(np.floor(position))], ordered[int(np.ceil(position))]
        fraction = position - np.floor(position)
        if fraction == 0 or low == high:
            out[q] = float(low)
        elif np.isinf(low) or np.isinf(high):
            out[q] = float(low if np.isinf(low) else high)
        else:
            out[q] = float(low + (high - low) * fraction)
    return out


def final_time_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at each (task, group)'s ranking time: the latest evaluation time that every
    solver of that task configuration (replicates pooled) was run at — a solver evaluated
    at t = 0.5, 0.9 is ranked with one evaluated at 0.1 … 1.0, and a mixture at D = 32
    (t = 7) is not held to the t = 4 of D = 12; the group's last time if they share none.

    A solver configuration with no row at that time whose runs all failed (a grid block
    that asked it for an earlier horizon only, and it failed there) keeps each run's last
    failed row: a failure is shown and ranked wherever its configuration is, never
    dropped for its time. One with an ok run there was not judged at this time and stays
    out, as any configuration run to an earlier horizon does."""
    if frame.empty:
        return frame
    groups = frame["group"] if "group" in frame else group_labels(frame)
    chosen = pd.Series(np.nan, index=frame.index)
    for _, part in frame.groupby([frame["task"], groups], sort=False):
        common = set.intersection(*(set(g["t"]) for _, g in part.groupby("solver")))
        chosen[part.index] = max(common) if common else part["t"].max()
    keep = (frame["t"] == chosen).to_numpy().copy()
    if "status" not in frame:
        return frame[keep]
    config = frame["solver_config"].astype(str) if "solver_config" in frame \
        else pd.Series("", index=frame.index)
    configuration = pd.MultiIndex.from_arrays([frame["task"], groups, frame["solver"],
                                               config]).to_flat_index()
    failed = frame["status"].isin(FAILED_STATUSES).to_numpy()
    by_configuration = pd.DataFrame({"present": keep, "ok": ~failed}).groupby(
        configuration, sort=False).transform("any")
    rows = np.flatnonzero(failed & ~by_configuration["present"].to_numpy()
                          & ~by_configuration["ok"].to_numpy())
    runs = frame["run_id"].to_numpy() if "run_id" in frame else np.arange(len(frame))
    last = (pd.DataFrame({"run": runs[rows], "t": frame["t"].to_numpy()[rows]}, index=rows)
            .sort_values("t", kind="stable").drop_duplicates("run", keep="last").index)
    keep[last.to_numpy()] = True  # each run's latest failed row, whatever the row order
    return frame[keep]


def natural_key(text: str) -> list:
    """Sort key treating digit runs as numbers: ``dim=2`` before ``dim=10``."""
    return [(0, float(part), "") if part[:1].isdigit() else (1, 0.0, part)
            for part in re.findall(r"\d+(?:\.\d+)?|\D+", str(text))]


def format_number(value: float, digits: int = 3) -> str:
    """Three significant digits, scientific only when needed; ∞ for infinity, — for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    value = float(value)
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}e}"


def median_iqr(row: pd.Series, metric: str, with_se: bool = False) -> str:
    """``0.012 [0.010, 0.015]`` from a :func:`summarise` row (``± se`` when asked)."""
    median = row.get(f"{metric}_median", np.nan)
    n_invalid = int(row.get(f"{metric}_n_invalid", 0) or 0)
    if median is None or np.isnan(median):
        return f"invalid ({n_invalid})" if n_invalid else "—"
    text = format_number(median)
    q25, q75 = row[f"{metric}_q25"], row[f"{metric}_q75"]
    if q25 != q75:
        text += f" [{format_number(q25)}, {format_number(q75)}]"
    se = row.get(f"{metric}_se", np.nan)
    if with_se and se is not None and np.isfinite(se) and se > 0 and np.isfinite(median):
        text += f" ±{format_number(se, 2)}"
    n_inf = row.get(f"{metric}_n_inf", 0)
    if n_inf and np.isfinite(median):
        text += f" ({int(n_inf)}×∞)"
    if n_invalid:
        text += f" ({n_invalid} invalid)"
    return text
