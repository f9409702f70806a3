"""From per-run rows to per-configuration summaries.

Shared by the report, the leaderboard and ``compare``: it names the metric
columns, labels solver configurations readably, and reduces seeds to a median
with an interquartile range and a seed-bootstrap interval.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from runners import registry

#: columns identifying one configuration (one cell of the grid, all seeds)
CONFIG_KEYS = ["task", "task_config", "solver", "solver_config", "t"]
FAILED_STATUSES = ("error", "timeout", "diverged")


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Registered metric names that have at least one value in ``frame``."""
    names = [name for name in registry.metrics() if name in frame.columns]
    return [name for name in names if pd.to_numeric(frame[name], errors="coerce").notna().any()]


def lower_is_better(metric: str) -> bool:
    """Direction of ``metric`` (unknown columns such as timings: lower is better)."""
    known = registry.metrics()
    return known[metric].lower_is_better if metric in known else True


def varying_params(frame: pd.DataFrame, prefix: str) -> list[str]:
    """Parameter columns (``prefix.*``) taking more than one value in ``frame``."""
    columns = [c for c in frame.columns if c.startswith(prefix + ".")]
    return sorted(c for c in columns if frame[c].astype(str).nunique(dropna=False) > 1)


def solver_labels(frame: pd.DataFrame) -> pd.Series:
    """``em(n_particles=10000)``: the solver name plus the parameters that vary.

    Parameters that are constant for a solver across ``frame`` are left out so
    that labels stay short; they remain in ``solver_config``.
    """
    labels = pd.Series(index=frame.index, dtype=object)
    for solver, part in frame.groupby("solver", sort=True):
        keys = varying_params(part.dropna(axis=1, how="all"), "solver")
        if not keys:
            labels[part.index] = solver
            continue
        inner = part[keys].astype(str).apply(
            lambda r: ",".join(f"{k.split('.', 1)[1]}={_compact(v)}" for k, v in r.items()), axis=1)
        labels[part.index] = solver + "(" + inner + ")"
    return labels


def _compact(value: str) -> str:
    """``10000.0`` → ``10000`` so labels read like the parameters were typed."""
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else value


def bootstrap_median_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.9,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the median over seeds, by resampling seeds.

    Deterministic (fixed ``seed``) so reports are reproducible. With one value
    the interval is that value: a single seed gives no evidence of spread.
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(n_boot, values.size), replace=True)
    medians = np.median(draws, axis=1)
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(medians, alpha)), float(np.quantile(medians, 1.0 - alpha))


def summarise(frame: pd.DataFrame, metrics: Iterable[str],
              keys: list[str] | None = None) -> pd.DataFrame:
    """Median, quartiles and counts of each metric per configuration.

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
        ``<metric>_median``, ``_q25``, ``_q75`` columns.
    """
    keys = keys or [k for k in CONFIG_KEYS + ["label"] if k in frame.columns]
    out = []
    for key, part in frame.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        ok = part[part["status"] == "ok"]
        row.update(n_ok=len(ok), n_failed=int(part["status"].isin(FAILED_STATUSES).sum()),
                   n_skipped=int((part["status"] == "skipped").sum()))
        for metric in metrics:
            values = pd.to_numeric(ok[metric], errors="coerce").dropna() \
                if metric in ok.columns else pd.Series(dtype=float)
            if values.empty:
                row.update({f"{metric}_median": np.nan, f"{metric}_q25": np.nan,
                            f"{metric}_q75": np.nan})
            else:
                row.update({f"{metric}_median": float(values.median()),
                            f"{metric}_q25": float(values.quantile(0.25)),
                            f"{metric}_q75": float(values.quantile(0.75))})
        out.append(row)
    return pd.DataFrame(out)


def final_time_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows at each task's ranking time: the latest evaluation time that every
    solver of the task was run at (so a solver evaluated at t = 0.5, 0.9 is ranked
    with one evaluated at 0.1 … 1.0); the task's last time if they share none."""
    if frame.empty:
        return frame
    chosen = {}
    for task, part in frame.groupby("task"):
        common = set.intersection(*(set(g["t"]) for _, g in part.groupby("solver")))
        chosen[task] = max(common) if common else part["t"].max()
    return frame[frame["t"] == frame["task"].map(chosen)]


def natural_key(text: str) -> list:
    """Sort key treating digit runs as numbers: ``dim=2`` before ``dim=10``."""
    import re

    return [(0, float(part), "") if part[:1].isdigit() else (1, 0.0, part)
            for part in re.findall(r"\d+(?:\.\d+)?|\D+", str(text))]


def format_number(value: float, digits: int = 3) -> str:
    """Three significant digits, scientific only when needed; '—' for missing."""
    if value is None or not np.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if 1e-3 <= magnitude < 1e5:
        return f"{value:.{digits}g}"
    return f"{value:.{max(digits - 1, 1)}e}"


def median_iqr(row: pd.Series, metric: str) -> str:
    """``0.012 [0.010, 0.015]`` from a :func:`summarise` row."""
    median = row.get(f"{metric}_median", np.nan)
    if not np.isfinite(median):
        return "—"
    q25, q75 = row[f"{metric}_q25"], row[f"{metric}_q75"]
    if q25 == q75:
        return format_number(median)
    return f"{format_number(median)} [{format_number(q25)}, {format_number(q75)}]"
