"""``gfbench compare BASELINE NEW``: a regression gate for CI.

Rows are matched on (task, task_config, solver, solver_config, t) and paired
over seeds. For each matched configuration and metric the verdict is one of

- ``not comparable``: the task, solver or metric version differs;
- ``new failure`` / ``fixed``: the baseline's runs were ok and some new one
  failed, or the reverse;
- ``same``: every paired difference is within ``atol + rtol·|baseline|``;
- ``worse`` / ``better``: every paired difference exceeds the tolerance in the
  same direction (with six or more seeds a Wilcoxon signed-rank test at 5 %
  replaces unanimity);
- ``not significant``: differences beyond the tolerance, but not consistently;
- ``missing`` / ``new``: the configuration exists on one side only.

Run times are compared only between rows with the same ``machine_id`` and only
reported (``slower`` / ``faster``), never gating: wall time on shared machines
is too noisy for a hard gate. Regressions (exit 1) are ``worse`` and
``new failure``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from runners import aggregate, store

KEYS = ["task", "task_config", "solver", "solver_config", "t"]
#: (rtol, atol) per metric; values differ between machines by BLAS and torch
#: kernel choices, so the gate tolerates small changes and flags real ones.
TOLERANCES = {
    "symkl": (0.25, 2e-3), "symkl_kde": (0.25, 5e-3), "symkl_grid": (0.25, 2e-3),
    "energy": (0.25, 2e-3), "sliced_w2": (0.25, 5e-3),
    "test_accuracy": (0.0, 0.01), "test_loglik": (0.02, 0.01),
}
DEFAULT_TOLERANCE = (0.25, 1e-3)
TIME_RATIO = 1.5
REGRESSIONS = ("worse", "new failure")


def tolerance(metric: str, rtol: float | None = None) -> tuple[float, float]:
    """(rtol, atol) for ``metric``; ``rtol`` overrides the relative part."""
    base_rtol, atol = TOLERANCES.get(metric, DEFAULT_TOLERANCE)
    return (base_rtol if rtol is None else rtol), atol


def paired_verdict(base: np.ndarray, new: np.ndarray, lower_is_better: bool,
                   rtol: float, atol: float) -> str:
    """Verdict for one metric from seed-paired values (same length, finite)."""
    worse_by = (new - base) if lower_is_better else (base - new)
    limit = atol + rtol * np.abs(base)
    if np.all(np.abs(worse_by) <= limit):
        return "same"
    if base.size >= 6:
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
    base_groups = dict(tuple(base.groupby(KEYS, sort=True))) if not base.empty else {}
    new_groups = dict(tuple(new.groupby(KEYS, sort=True))) if not new.empty else {}
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
                         "detail": f"metric version {b_versions[2].get(metric)} -> "
                                   f"{n_versions[2].get(metric)}"})
            continue
        cols = [f"{metric}_b", f"{metric}_n"]
        if not set(cols) <= set(paired.columns):
            continue
        values = paired[cols].apply(pd.to_numeric, errors="coerce").dropna()
        if values.empty:
            continue
        r, a = tolerance(metric, rtol)
        bv, nv = values[cols[0]].to_numpy(float), values[cols[1]].to_numpy(float)
        rows.append({**ident, "metric": metric,
                     "verdict": paired_verdict(bv, nv, aggregate.lower_is_better(metric), r, a),
                     "base": float(np.median(bv)), "new": float(np.median(nv)),
                     "n_pairs": len(values), "detail": f"rtol={r}, atol={a}"})
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
                 echo=print) -> int:
    """Compare two results directories; print a summary, return the regression count."""
    table = compare_frames(store.load(base), store.load(new), rtol)
    if out is not None:
        store.atomic_write_text(Path(out), table.to_csv(index=False))
    counts = table["verdict"].value_counts().to_dict() if not table.empty else {}
    echo("gfbench compare: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                or "nothing to compare"))
    regressions = table[table["verdict"].isin(REGRESSIONS)]
    for _, row in regressions.iterrows():
        echo(f"  REGRESSION {row['verdict']}: {row['task']} [{row['task_config']}] "
             f"{row['solver']} [{row['solver_config']}] t={row['t']} {row['metric']}: "
             f"{aggregate.format_number(row.get('base', np.nan))} -> "
             f"{aggregate.format_number(row.get('new', np.nan))} {row['detail']}")
    return len(regressions)
