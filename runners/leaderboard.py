"""``gfbench leaderboard``: rank solver configurations per (task, task configuration).

Each entry is one solver configuration; its score is the median over seeds of
the task's primary metric at the task's final evaluation time (``ok`` runs
only). Its rank is one plus the number of entries that are *clearly* better:
whose seed-bootstrap 90 % interval of the median lies entirely on the better
side of this entry's interval. Entries with overlapping intervals therefore
share ranks — with a single seed an interval is a point, so only exact ties
tie; run more seeds for honest separation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runners import aggregate, registry, store


def primary_metric(task: str, frame: pd.DataFrame, override: str | None = None) -> str | None:
    """The metric a task is ranked by: ``override``, else the task's, if present."""
    candidates = [override] if override else []
    task_cls = registry.tasks().get(task)
    candidates.append(getattr(task_cls, "primary_metric", "energy"))
    available = aggregate.metric_columns(frame)
    return next((m for m in candidates if m in available), None)


def rank_entries(scores: pd.DataFrame, lower_is_better: bool) -> pd.Series:
    """Competition ranks with ties where bootstrap intervals overlap.

    Parameters
    ----------
    scores : DataFrame
        Columns ``median``, ``ci_low``, ``ci_high`` (finite).
    lower_is_better : bool
        Direction of the metric.
    """
    low, high = scores["ci_low"].to_numpy(), scores["ci_high"].to_numpy()
    if lower_is_better:
        better = high[None, :] < low[:, None]   # [i, j]: j clearly better than i
    else:
        better = low[None, :] > high[:, None]
    return pd.Series(1 + better.sum(axis=1), index=scores.index)


def build_leaderboard(frame: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One row per (task, task_config, solver configuration), ranked.

    Configurations whose runs all failed are listed last with rank NaN and
    their status, so a broken solver is visible rather than silently absent.
    """
    if frame.empty:
        return pd.DataFrame()
    frame = frame.assign(label=aggregate.solver_labels(frame))
    rows: list[dict[str, Any]] = []
    for task, task_part in frame.groupby("task", sort=True):
        task_part = aggregate.final_time_rows(task_part)
        chosen = primary_metric(task, task_part, metric)
        for config, part in task_part.groupby("task_config", sort=False):
            rows.extend(_rank_block(task, config, part, chosen))
    board = pd.DataFrame(rows)
    keys = board["task_config"].map(aggregate.natural_key)
    # within a rank, best median first: the sign makes "higher is better" sort descending
    better_first = board["median"] * np.where(board["lower_is_better"], 1.0, -1.0)
    board = board.assign(_k=keys.map(tuple), _order=better_first).sort_values(
        ["task", "_k", "rank", "_order"], na_position="last", kind="stable") \
        .drop(columns=["_k", "_order", "lower_is_better"])
    return board.reset_index(drop=True)


def _rank_block(task: str, config: str, part: pd.DataFrame, metric: str | None) -> list[dict]:
    lower = aggregate.lower_is_better(metric) if metric else True
    entries = []
    for label, runs in part.groupby("label", sort=True):
        ok = runs[runs["status"] == "ok"]
        values = pd.to_numeric(ok[metric], errors="coerce").dropna().to_numpy() \
            if metric and metric in ok else np.array([])
        low, high = aggregate.bootstrap_median_ci(values)
        statuses = runs["status"].value_counts().to_dict()
        entries.append({
            "task": task, "task_config": config, "t": float(runs["t"].iloc[0]), "solver": label,
            "metric": metric or "", "lower_is_better": lower,
            "median": float(np.median(values)) if values.size else np.nan,
            "ci_low": low, "ci_high": high, "n_seeds": int(values.size),
            "n_failed": int(runs["status"].isin(aggregate.FAILED_STATUSES).sum()),
            "time_run_median": float(pd.to_numeric(ok["time_run"], errors="coerce").median())
            if len(ok) else np.nan,
            "status": "ok" if values.size else ",".join(sorted(statuses)),
        })
    block = pd.DataFrame(entries)
    ranked = block[np.isfinite(block["median"])]
    block["rank"] = np.nan
    if not ranked.empty:
        block.loc[ranked.index, "rank"] = rank_entries(ranked, lower)
    return block.to_dict("records")


def to_markdown(board: pd.DataFrame) -> str:
    """Leaderboard as Markdown, one section per task."""
    lines = ["# gfbench leaderboard\n",
             "Rank = 1 + number of entries whose seed-bootstrap 90% interval of the median is "
             "entirely better; overlapping intervals share a rank. Final evaluation time, ok runs "
             "only; entries that never finished are listed last.\n"]
    from runners.report import markdown_table

    for task, part in board.groupby("task", sort=True):
        metric = next((m for m in part["metric"] if m), "")
        direction = "lower" if aggregate.lower_is_better(metric) else "higher"
        lines.append(f"## {task} — {metric} ({direction} is better)\n")
        shown = pd.DataFrame({
            "task": part["task_config"],
            "rank": part["rank"].map(lambda r: "—" if pd.isna(r) else str(int(r))),
            "solver": part["solver"],
            "median": part["median"].map(aggregate.format_number),
            "90% CI": [f"[{aggregate.format_number(a)}, {aggregate.format_number(b)}]"
                       for a, b in zip(part["ci_low"], part["ci_high"])],
            "seeds": part["n_seeds"], "failed": part["n_failed"],
            "time [s]": part["time_run_median"].map(aggregate.format_number),
            "status": part["status"],
        })
        lines.append(markdown_table(shown))
    return "\n".join(lines)


def write_leaderboard(dirs: list[Path], out: Path, metric: str | None = None) -> dict[str, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` into ``out``."""
    board = build_leaderboard(store.load(dirs), metric)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "leaderboard.md", out / "leaderboard.csv"
    store.atomic_write_text(csv_path, board.to_csv(index=False))
    store.atomic_write_text(md_path, to_markdown(board) if not board.empty
                            else "# gfbench leaderboard\n\nNo runs.\n")
    return {"markdown": md_path, "csv": csv_path}
