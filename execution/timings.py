"""Run times: the ``timings.csv`` of a results directory, and durations in words.

Every results directory gets a ``timings.csv`` on export (:func:`execution.store.export`):
per configuration (task, task config, solver, solver config), the median seconds
one ok run took (set-up + solve + metric evaluation) and on how many runs that
rests. ``gfbench run --dry-run`` and ``gfbench list`` estimate wall times from
these files (:mod:`cli.estimate`).

The table is computed here and written by the store, which owns every file of a
results directory: this module imports nothing of the project, so the store,
the executor's progress line, the report and the command line can all use it
without an import cycle (it once lived in the command line's estimate module,
which the store imported back).
"""
from __future__ import annotations

from typing import Any

#: the columns of ``timings.csv``, in order
TIMING_COLUMNS = ("task", "task_config", "solver", "solver_config", "seconds", "n_runs")


def timing_table(frame) -> list[dict[str, Any]]:
    """Median seconds per ok run and configuration, from a results frame (one row per t).

    Parameters
    ----------
    frame : pandas.DataFrame
        Rows of :func:`execution.store.load` (one per run and evaluation time).

    Returns
    -------
    list of dict
        One record per configuration with the keys of :data:`TIMING_COLUMNS`;
        empty when the frame has no run time.
    """
    import pandas as pd  # heavy: only the export needs it

    if frame.empty or "time_run" not in frame:
        return []
    ok = frame[frame["status"] == "ok"]
    per_run = ok.groupby("run_id").agg(
        task=("task", "first"), task_config=("task_config", "first"),
        solver=("solver", "first"), solver_config=("solver_config", "first"),
        setup=("time_setup", "first"), run=("time_run", "first"), evaluation=("time_eval", "sum"))
    per_run["seconds"] = per_run[["setup", "run", "evaluation"]].apply(
        pd.to_numeric, errors="coerce").sum(axis=1)
    table = per_run.groupby(["task", "task_config", "solver", "solver_config"]).agg(
        seconds=("seconds", "median"), n_runs=("seconds", "size")).reset_index()
    return table.to_dict("records")


def timings_csv(frame) -> str:
    """The text of ``timings.csv`` for a results frame: a header and one line per configuration.

    Seconds keep four significant digits; a cell holding a comma (a
    configuration label) is quoted.
    """
    lines = [",".join(TIMING_COLUMNS)]
    for row in timing_table(frame):
        lines.append(",".join(_csv_cell(row[c]) for c in TIMING_COLUMNS))
    return "\n".join(lines) + "\n"


def _csv_cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f'"{text}"' if "," in text else text


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(int(round(seconds / 60)), 60)
    return f"{hours} h {minutes:02d} min"
