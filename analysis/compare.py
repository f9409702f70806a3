"""``gfbench compare BASELINE NEW``: a regression gate that cannot pass by accident.

Rows are matched on (task, task_config, solver, solver_config, t) and paired
over seeds. For each configuration and metric the verdict is one of

- ``same``: every paired difference is within ``atol + rtol·|baseline|`` or
  within 3 Monte Carlo standard errors of the two runs (noise is not a change);
- ``worse`` / ``better``: every paired difference is beyond both, in the same
  direction (with six or more seeds: a Wilcoxon signed-rank test at 5 % and a
  median difference beyond the tolerance replace unanimity); a finite value
  that became +∞ (or −∞ for higher-is-better metrics) is ``worse``;
- ``not significant``: differences beyond tolerance and noise, not consistently;
- ``new failure`` / ``fixed``: the baseline's runs were ok and a new one failed
  (or a metric the baseline computed is no longer computed, or a new value is
  invalid — −∞, below the metric's bound beyond noise, absurd, or a density
  that does not integrate to 1: see :func:`analysis.aggregate.invalid_reasons`),
  or the reverse;
- ``not comparable``: the task, solver or metric version differs;
- ``missing`` / ``new``: the configuration exists in the baseline only / in
  the new results only.

Run times are compared only between rows with the same ``machine_id`` and only
reported (``slower`` / ``faster``), never gating.

The gate fails (exit 1) on ``worse``, ``new failure``, ``missing`` (unless
``allow_missing``) and on unreadable or corrupt run files on either side; it
refuses to judge (exit 2) when the two sides share no configuration or no
metric could be compared — a gate that compared nothing has not passed.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import aggregate
from execution import store

KEYS = ["task", "task_config", "solver", "solver_config", "t"]
#: (rtol, atol) per metric; values differ between machines by BLAS and torch
#: kernel choices, so the gate tolerates small changes and flags real ones.
TOLERANCES = {
    "symkl": (0.25, 2e-3), "symkl_kde": (0.25, 5e-3), "symkl_grid": (0.25, 2e-3),
    "energy": (0.25, 2e-3), "sliced_w2": (0.25, 5e-3),
    "mean_error": (0.25, 5e-3), "cov_error": (0.25, 5e-3),
    "test_accuracy": (0.0, 0.01), "test_loglik": (0.02, 0.01),
}
DEFAULT_TOLERANCE = (0.25, 1e-3)
#: differences within this many combined standard errors are noise
NOISE_Z = 3.0
TIME_RATIO = 1.5
REGRESSIONS = ("worse", "new failure")
VERDICTS = ("same", "better", "worse", "not significant", "new failure", "fixed",
            "not comparable", "missing", "new")


class NothingCompared(ValueError):
    """The two result sets share no configuration or no comparable metric."""


def tolerance(metric: str, rtol: float | None = None) -> tuple[float, float]:
    """(rtol, atol) for ``metric``; ``rtol`` overrides the relative part."""
    base_rtol, atol = TOLERANCES.get(metric, DEFAULT_TOLERANCE)
    return (base_rtol if rtol is None else rtol), atol


def paired_verdict(base: np.ndarray, new: np.ndarray, lower_is_better: bool,
                   rtol: float, atol: float, base_se: np.ndarray | None = None,
                   new_se: np.ndarray | None = None) -> str:
    """Verdict for one metric from seed-paired values (same length, not NaN)."""
    base, new = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    sign = 1.0 if lower_is_better else -1.0
    both_inf = np.isinf(base) & np.isinf(new) & (np.sign(base) == np.sign(new))
    with np.errstate(invalid="ignore"):
        worse_by = np.where(both_inf, 0.0, sign * (new - base))
    limit = atol + rtol * np.where(np.isfinite(base), np.abs(base), 0.0)
    if base_se is not None and new_se is not None:
        noise = NOISE_Z * np.hypot(np.nan_to_num(base_se, nan=0.0),
                                   np.nan_to_num(new_se, nan=0.0))
        limit = np.maximum(limit, noise)
    if np.all(np.abs(worse_by) <= limit):
        return "same"
    if np.any(np.isposinf(worse_by)) and not np.any(worse_by < -limit):
        return "worse"
    if np.any(np.isneginf(worse_by)) and not np.any(worse_by > limit):
        return "better"
    if base.size >= 6 and np.isfinite(worse_by).all():
        from scipy.stats import wilcoxon

        p_value = wilcoxon(worse_by, alternative="two-sided").pvalue
        beyond = np.abs(np.median(worse_by)) > np.median(limit)
        if p_value < 0.05 and beyond:
            return "worse" if np.median(worse_by) > 0 else "better"
        return "not significant"
    if np.all(worse_by > limit):
        return "worse"
    if np.all(-worse_by > limit):
        return "better"
    return "not significant"


def _versions(part: pd.DataFrame) -> tuple:
    metric_versions = part["metric_versions"].iloc[0] if "metric_versions" in part else "{}"
    return (part["task_version"].iloc[0], part["solver_version"].iloc[0],
            json.loads(metric_versions) if isinstance(metric_versions, str) else {})


def compare_frames(base: pd.DataFrame, new: pd.DataFrame, rtol: float | None = None
                   ) -> pd.DataFrame:
    """Verdict table: one row per (configuration, metric or ``status``/``time_run``)."""
    metrics = sorted(set(aggregate.metric_columns(base)) | set(aggregate.metric_columns(new)))
    base, new = _mark_invalid(base, metrics), _mark_invalid(new, metrics)
    base_groups = dict(tuple(base.groupby(KEYS, sort=True))) if not base.empty else {}
    new_groups = dict(tuple(new.groupby(KEYS, sort=True))) if not new.empty else {}
    if not set(base_groups) & set(new_groups):
        raise NothingCompared(f"the baseline ({len(base_groups)} configurations) and the new "
                              f"results ({len(new_groups)}) share no configuration")
    out = []
    for key in sorted(set(base_groups) | set(new_groups), key=str):
        ident = dict(zip(KEYS, key))
        if key not in new_groups or key not in base_groups:
            out.append({**ident, "metric": "", "verdict": "missing" if key not in new_groups
                        else "new", "detail": ""})
            continue
        out.extend(_compare_config(ident, base_groups[key], new_groups[key], metrics, rtol))
    return pd.DataFrame(out, columns=KEYS + ["metric", "verdict", "base", "new", "n_pairs",
                                            "detail"])


def _mark_invalid(frame: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """``<metric>__invalid`` columns: why a value cannot be judged ('' when it can)."""
    if frame.empty:
        return frame
    return frame.assign(**{f"{m}__invalid": aggregate.invalid_reasons(frame, m)
                           for m in metrics if m in frame})


def _compare_config(ident: dict, b: pd.DataFrame, n: pd.DataFrame, metrics: list[str],
                    rtol: float | None) -> list[dict]:
    b_versions, n_versions = _versions(b), _versions(n)
    if b_versions[:2] != n_versions[:2]:
        return [{**ident, "metric": "", "verdict": "not comparable",
                 "detail": f"task/solver version {b_versions[:2]} -> {n_versions[:2]}"}]
    b_ok, n_ok = (b["status"] == "ok").all(), (n["status"] == "ok").all()
    if b_ok and not n_ok:
        errors = n.loc[n["status"] != "ok", "error"].dropna().astype(str)
        return [{**ident, "metric": "status", "verdict": "new failure",
                 "detail": errors.iloc[0][:200] if len(errors) else ""}]
    if not b_ok and n_ok:
        return [{**ident, "metric": "status", "verdict": "fixed", "detail": ""}]
    rows = []
    paired = b.merge(n, on="seed", suffixes=("_b", "_n"))
    paired = paired[(paired["status_b"] == "ok") & (paired["status_n"] == "ok")]
    for metric in metrics:
        b_version, n_version = b_versions[2].get(metric), n_versions[2].get(metric)
        if b_version is None or n_version is None:
            continue  # computed on one side only: nothing to compare
        if b_version != n_version:
            rows.append({**ident, "metric": metric, "verdict": "not comparable",
                         "detail": f"metric version {b_version} -> {n_version}"})
            continue
        cols = [f"{metric}_b", f"{metric}_n"]
        if not set(cols) <= set(paired.columns):
            continue
        values = paired[cols].apply(pd.to_numeric, errors="coerce")
        flags = [paired.get(f"{metric}__invalid{s}", pd.Series("", index=paired.index))
                 .fillna("") != "" for s in ("_b", "_n")]
        if (flags[1] & ~flags[0]).any():
            reason = paired.loc[flags[1] & ~flags[0], f"{metric}__invalid_n"].iloc[0]
            rows.append({**ident, "metric": metric, "verdict": "new failure",
                         "n_pairs": int((flags[1] & ~flags[0]).sum()),
                         "detail": (reason if reason.startswith("invalid")
                                    else f"invalid: {reason}")[:200]})
            continue
        # an invalid value is no value: the other side is compared with what remains
        values = values.mask(pd.concat(flags, axis=1).set_axis(cols, axis=1))
        had, has = values[cols[0]].notna(), values[cols[1]].notna()
        if (had & ~has).any():
            note = store.note_for(paired.loc[had & ~has, "metric_notes_n"].iloc[0], metric) \
                if "metric_notes_n" in paired else ""
            rows.append({**ident, "metric": metric, "verdict": "new failure",
                         "n_pairs": int((had & ~has).sum()),
                         "detail": f"no longer computed: {note}"[:200]})
            continue
        if (~had & has).any() and not (had & has).any():
            rows.append({**ident, "metric": metric, "verdict": "fixed", "detail": "now computed"})
            continue
        both = had & has
        if not both.any():
            continue
        r, a = tolerance(metric, rtol)
        bv, nv = values.loc[both, cols[0]].to_numpy(float), values.loc[both, cols[1]].to_numpy(float)
        se = [pd.to_numeric(paired.loc[both, f"{metric}_se{s}"], errors="coerce").to_numpy(float)
              if f"{metric}_se{s}" in paired else None for s in ("_b", "_n")]
        verdict = paired_verdict(bv, nv, aggregate.lower_is_better(metric), r, a, *se)
        rows.append({**ident, "metric": metric, "verdict": verdict,
                     "base": float(np.median(bv)), "new": float(np.median(nv)),
                     "n_pairs": int(both.sum()), "detail": f"rtol={r}, atol={a}"})
    rows.extend(_compare_time(ident, paired))
    return rows


def _compare_time(ident: dict, paired: pd.DataFrame) -> list[dict]:
    if not {"machine_id_b", "machine_id_n"} <= set(paired.columns) or paired.empty:
        return []
    same = paired[paired["machine_id_b"] == paired["machine_id_n"]]
    times = same[["time_run_b", "time_run_n"]].apply(pd.to_numeric, errors="coerce").dropna()
    if times.empty:
        return [{**ident, "metric": "time_run", "verdict": "not comparable",
                 "detail": "different machines"}]
    b, n = times["time_run_b"].median(), times["time_run_n"].median()
    verdict = "slower" if n > TIME_RATIO * b + 0.05 else "faster" if b > TIME_RATIO * n + 0.05 \
        else "same"
    return [{**ident, "metric": "time_run", "verdict": verdict, "base": b, "new": n,
             "n_pairs": len(times), "detail": f"ratio {n / b:.2f}" if b > 0 else ""}]


def compare_dirs(base: Path, new: Path, rtol: float | None = None, out: Path | None = None,
                 allow_missing: bool = False, echo=print) -> int:
    """Compare two results directories; print a summary, return the number of failures.

    Raises :class:`NothingCompared` when there is nothing to judge.
    """
    base_frame, base_corrupt = store.load_checked(base)
    new_frame, new_corrupt = store.load_checked(new)
    table = compare_frames(base_frame, new_frame, rtol)
    if out is not None:
        store.atomic_write_text(Path(out), table.to_csv(index=False))
    counts = table["verdict"].value_counts().to_dict() if not table.empty else {}
    echo("gfbench compare: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    metric_rows = table[(table["metric"] != "time_run") & (table["metric"] != "")
                        & ~table["verdict"].isin(["not comparable"])]
    if metric_rows.empty:
        raise NothingCompared("no metric or status could be compared (versions changed, or no "
                              "ok runs on both sides): regenerate the baseline")
    failing = list(REGRESSIONS) + ([] if allow_missing else ["missing"])
    failures = table[table["verdict"].isin(failing)]
    for _, row in failures.iterrows():
        echo(f"  REGRESSION {row['verdict']}: {row['task']} [{row['task_config']}] "
             f"{row['solver']} [{row['solver_config']}] t={row['t']} {row['metric']}: "
             f"{aggregate.format_number(row.get('base', np.nan))} -> "
             f"{aggregate.format_number(row.get('new', np.nan))} {row['detail']}")
    for side, paths in (("baseline", base_corrupt), ("new", new_corrupt)):
        for path in paths:
            echo(f"  CORRUPT {side} run file {path}: unreadable, not compared")
    return len(failures) + len(base_corrupt) + len(new_corrupt)
