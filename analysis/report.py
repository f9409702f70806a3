"""``gfbench report``: a report that opens with the answer.

One Markdown file and one self-contained HTML file (figures embedded) per
call, from one or several results directories:

1. a header — what was run, on what, when;
2. a summary per task — the leaderboard's matrix (solvers × dimension or data
   set: rank and median at the ranking time, colour-coded in the HTML), the
   winner per group and the cost of each solver; split so that no table is wider
   than a 1400 px window (:func:`_fitted`);
3. a table of contents;
4. the details per task — the leaderboard's tables per group, the metrics at
   the ranking time, the original study's figures (SymKL against the
   dimension and against t, per estimator: Monte Carlo, grid and KDE SymKL
   are never drawn on one axis), the cost–accuracy front (time per run on a
   log axis, one colour per solver, points marked by their dimension), small
   multiples of one seed's solver law against the reference (1-D histograms;
   the reference's first two principal components above 1-D — the study's
   Figure 3), the
   filtering densities and box plot, the logistic-regression table beside
   the published Table 2, and the failed runs and infinite scores.

Labels show only the parameters that vary; metrics are named in words.

This module decides what the report says: its sections and their tables.
How it is written (Markdown and HTML) lives in :mod:`analysis.document`, and
how it is drawn (the figures of item 4) in :mod:`analysis.figures`: report.py
had grown to 971 lines, a third of them plotting, before they were split.
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate, leaderboard
from analysis.document import HTML_HEAD, Document
from analysis.figures import task_figures
from execution import store
from execution.timings import format_duration

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "results"
#: task sections in this order, others after them alphabetically
TASK_ORDER = ("ou", "stationary_gmm", "stationary_gmm_study", "filtering_1d", "bayesian_logreg")


# --- published numbers ---------------------------------------------------------
def published_medians(directory: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """The original study's medians we compare against (empty if not shipped)."""
    path = directory / "published_medians.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


#: tasks scored against another task's published numbers: the study's own mixture targets,
#: rebuilt, are the very instances its medians were taken over
PUBLISHED_AS = {"stationary_gmm_study": "stationary_gmm"}


def _published_for(row: pd.Series, published: pd.DataFrame, frame_row: pd.Series) -> str:
    """Published SymKL for a summary row, as ``value (metric)``, or ''."""
    if published.empty:
        return ""
    solver = frame_row.get("solver", row.get("solver"))
    task = PUBLISHED_AS.get(row["task"], row["task"])
    match = published[(published["task"] == task) & (published["solver"] == solver)
                      & np.isclose(published["t"], float(row["t"]))]
    dim = frame_row.get("task.dim", 1.0)
    dim = 1.0 if dim is None or (isinstance(dim, float) and np.isnan(dim)) else float(dim)
    match = match[np.isclose(match["dim"].astype(float), dim)]
    n = frame_row.get("solver.n_particles")
    if "n_particles" in match and n is not None and not pd.isna(n):
        match = match[np.isclose(match["n_particles"].astype(float), float(n))]
    elif "n_particles" in match:
        match = match[match["n_particles"].isna()]
    if match.empty:
        return ""
    best = match.iloc[0]
    return f"{aggregate.format_number(best['value'])} ({best['metric']})"


# --- header and summary --------------------------------------------------------------------
def _header(doc: Document, frame: pd.DataFrame, dirs: list[Path], corrupt: list[Path]) -> None:
    doc.heading("gfbench report", 1)
    runs = frame.drop_duplicates("run_id")

    def values(column: str) -> str:
        found = sorted(map(str, runs[column].dropna().unique())) if column in runs else []
        return ", ".join(found) if found else "—"

    tasks = ", ".join(sorted(runs["task"].unique(), key=_task_order))
    finished = pd.to_datetime(runs.get("finished_at"), errors="coerce", utc=True).dropna()
    when = (f"{finished.min():%Y-%m-%d} to {finished.max():%Y-%m-%d}" if len(finished)
            else "unknown dates")
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(runs["status"].value_counts().items()))
    doc.text(f"{len(runs)} runs ({statuses}) of {runs['solver'].nunique()} solvers on {tasks}, "
             f"finished {when}; results: {', '.join(map(str, dirs))}.")
    doc.text(f"Machine: {values('host')} ({values('platform')}, {values('cpu_count')} cores; "
             f"devices {values('device')}), {values('n_threads')} thread(s) per run; gfbench "
             f"{values('gfbench_version')} at git {values('git_sha')[:80]}, torch "
             f"{values('torch')}, numpy {values('numpy')}.")
    if corrupt:
        doc.text(f"Warning: {len(corrupt)} unreadable run files (corrupt, partial or foreign) "
                 "are left out of everything below: " + ", ".join(p.name for p in corrupt) + ".")


def _task_order(task: str):
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task)


RANK_COLOURS = {1: "#b7e1b0", 2: "#def0d6", 3: "#f2f7e8"}
FAILED_COLOUR = "#f4c7c3"


def _matrix_colours(matrix: pd.DataFrame) -> pd.DataFrame:
    """Rank 1 green, 2–3 lighter, failures red (the HTML summary's shading)."""
    def colour(cell: str) -> str:
        text = str(cell)
        if text.startswith("failed"):
            return FAILED_COLOUR
        if text.startswith("#"):
            rank = int(text[1:].split()[0])
            return RANK_COLOURS.get(rank, "")
        return ""

    return matrix.map(colour)


def _summary(doc: Document, board: pd.DataFrame) -> None:
    doc.heading("Summary", 2)
    doc.text("Which solver wins, by how much, at what cost: per task and ranking metric, each "
             "solver's rank (#) and median over seeds and data splits in each dimension or "
             "data set at the ranking time, its wins and mean rank, and its median run time. "
             "Ranks tie where the difference is within noise (the leaderboard's rule, below). "
             f"More than {MAX_GROUP_COLUMNS} groups come in parts; a task that varies "
             "several parameters (data set, protocol, state) gets a table per combination "
             "of all but one, with solvers across where that is narrower.")
    for task in sorted(board["task"].unique(), key=_task_order):
        for metric, part in board[board["task"] == task].groupby("metric", sort=False):
            direction = "lower" if aggregate.lower_is_better(metric) else "higher"
            doc.heading(f"{task}: {aggregate.metric_title(metric)} ({direction} is better)", 3,
                        anchor=f"summary-{task}-{metric}")
            facets = _facets(part)
            # narrow per-facet tables side by side: the whole task on one screen
            with doc.block("facets"):
                for facet, axis, rows in facets:
                    with doc.block("facet"):
                        _summary_matrix(doc, facet, axis, rows)
            for facet, _, rows in facets:
                doc.text((f"{facet}: " if facet else "") + _winners(rows))


def _summary_matrix(doc: Document, facet: str, axis: str | None, rows: pd.DataFrame) -> None:
    """One facet's matrix with each solver's run time, in as many tables as fit."""
    matrix = leaderboard.matrix(rows)
    times = rows.groupby("solver")["time_run_median"].median()
    matrix["time per run"] = matrix["solver"].map(times).map(_seconds)
    for note, table in _fitted(matrix, axis):
        doc.table(table, _matrix_colours(table),
                  caption="; ".join(filter(None, [facet, note])) or None)


#: the most value columns (dimensions, data sets or solvers) a summary matrix shows side
#: by side: about what fits a 1400 px window beside the labels and the totals
MAX_GROUP_COLUMNS = 8
#: the per-solver totals after the group columns of a summary matrix
TOTAL_COLUMNS = ("wins", "mean rank", "failures", "time per run")


def _group_parameters(group: str) -> dict[str, str]:
    """``dataset=german, protocol=study`` → ``{"dataset": "german", "protocol": "study"}``."""
    # group_labels joins name=value pairs with ", "; "all" (nothing varies) has none
    return dict(p.split("=", 1) for p in str(group).split(", ") if "=" in p)


def _facets(part: pd.DataFrame) -> list[tuple[str, str | None, pd.DataFrame]]:
    """One (task, metric)'s board rows as tables over a single task parameter.

    With several varying parameters (data set, protocol, state) the one with the most
    values is the tables' axis and each combination of the others a table of its own:
    ``dataset=german, protocol=study, state=centred`` is the group ``dataset=german`` of
    the table ``protocol=study, state=centred``.

    Returns
    -------
    list of (facet, axis, rows)
        ``facet`` names the table ('' when there is one), ``axis`` the parameter (None
        when nothing varies), ``rows`` the board rows with ``group`` = the axis value.
    """
    params = part["group"].map(_group_parameters)
    names = list(dict.fromkeys(name for p in params for name in p))
    if len(names) < 2:
        return [("", names[0] if names else None, part)]
    axis = max(names, key=lambda name: params.map(lambda p: p.get(name)).nunique())
    facet = params.map(lambda p: ", ".join(f"{k}={v}" for k, v in p.items() if k != axis))
    group = params.map(lambda p: f"{axis}={p.get(axis)}")
    return [(label, axis, part[facet == label].assign(group=group[facet == label]))
            for label in sorted(facet.unique(), key=aggregate.natural_key)]


def _fitted(matrix: pd.DataFrame, axis: str | None) -> list[tuple[str, pd.DataFrame]]:
    """A summary matrix as tables of at most :data:`MAX_GROUP_COLUMNS` value columns.

    A matrix wider than tall (nine data sets, four solvers) whose solvers fit across is
    turned: groups down, solvers across, the totals as its last rows. Any other matrix
    with too many groups keeps solvers down (as the rest of the report) and is cut into
    balanced blocks of groups, each with the solver names; the totals follow the first.

    Returns
    -------
    list of (note, table)
        ``note`` says which block a table is ('' for a matrix shown whole).
    """
    groups = [c for c in matrix.columns if c not in ("solver", *TOTAL_COLUMNS)]
    if len(matrix) < len(groups) and len(matrix) <= MAX_GROUP_COLUMNS:
        return [("", _turned(matrix, axis, groups))]
    totals = [c for c in TOTAL_COLUMNS if c in matrix.columns]
    return _blocks(matrix, groups, totals)


def _turned(matrix: pd.DataFrame, axis: str | None, groups: list[str]) -> pd.DataFrame:
    """Groups × solvers: ``matrix`` transposed, its totals the last rows."""
    body = matrix.set_index("solver").T.rename_axis(columns=None)
    # the first column names the axis, so its cells need only the values
    labels = [str(g).split("=", 1)[-1] if g in groups else g for g in body.index]
    return body.set_axis(labels).rename_axis(axis or "group").reset_index()


def _blocks(matrix: pd.DataFrame, groups: list[str],
            totals: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """``matrix`` cut into balanced blocks of ``groups``, each after the solver names;
    the ``totals`` (over every group) follow the first block: the answer comes first."""
    n_blocks = -(-len(groups) // MAX_GROUP_COLUMNS)
    if n_blocks <= 1:
        return [("", matrix)]
    out = []
    for i, block in enumerate(np.array_split(np.arange(len(groups)), n_blocks)):
        chosen = [groups[j] for j in block]
        note = f"{chosen[0]} to {chosen[-1]} (part {i + 1} of {n_blocks})"
        if i == 0:
            note += f", with the totals over all {len(groups)} groups"
            chosen += totals
        out.append((note, matrix[["solver", *chosen]]))
    return out


def _seconds(value: float) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return format_duration(value) if value >= 1 else f"{value:.2g} s"


#: a solver enters the "best" line only if it is ranked in at least this share of the tables
BEST_COVERAGE = 0.5


def _winners(part: pd.DataFrame) -> str:
    """Who is rank 1 where, and the best non-oracle solver among those that ran in most tables.

    Mean ranks count failed and ∞ cells at their (last) rank; a solver ranked
    in fewer than :data:`BEST_COVERAGE` of the tables (a 1-D-only method in
    a grid of dimensions) is not a candidate; ties are named.
    """
    lines = []
    for group, rows in sorted(part.groupby("group"), key=lambda kv: aggregate.natural_key(kv[0])):
        first = rows[rows["rank"] == 1]["solver"].tolist()
        if len(first) == 1 and len(rows.dropna(subset=["rank"])) == 1:
            first = [f"{first[0]} (alone in its table)"]
        if first:
            lines.append(f"{group}: {', '.join(first)}")
    text = "Rank 1 — " + "; ".join(lines) + "." if lines else "No ranked entry."
    n_tables = part["group"].nunique()
    ranked = part[part["solver"] != leaderboard.ORACLE].dropna(subset=["rank"])
    if ranked.empty:
        return text
    stats = ranked.groupby("solver").agg(mean=("rank", "mean"), tables=("group", "nunique"),
                                         failed=("failed", "sum"))
    eligible = stats[stats["tables"] >= BEST_COVERAGE * n_tables]
    if eligible.empty:
        return text + (f" No solver besides the oracle is ranked in at least "
                       f"{BEST_COVERAGE:.0%} of the {n_tables} tables.")
    best = eligible["mean"].min()
    names = [f"{name} ({aggregate.format_number(row['mean'])}, ranked in "
             f"{int(row['tables'])}/{n_tables} tables"
             + (f", {int(row['failed'])} failed or ∞ runs" if row["failed"] else "") + ")"
             for name, row in eligible[np.isclose(eligible["mean"], best)].iterrows()]
    tie = " (tied)" if len(names) > 1 else ""
    return text + (f" Best mean rank without the oracle, among solvers ranked in at least "
                   f"{BEST_COVERAGE:.0%} of the tables{tie}: {'; '.join(names)}.")


# --- task sections ------------------------------------------------------------------------
def _task_section(doc: Document, task: str, frame: pd.DataFrame, board: pd.DataFrame,
                  published: pd.DataFrame) -> None:
    info = aggregate.task_info(task)
    doc.heading(f"Task `{task}`", 2, anchor=f"task-{task}")
    if info.get("description"):
        doc.text(info["description"])
    counts = frame.drop_duplicates("run_id")["status"].value_counts().to_dict()
    doc.text("Runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    provenance = sorted(frame["reference_provenance"].dropna().astype(str).unique()) \
        if "reference_provenance" in frame else []
    if provenance:
        doc.text("Reference: " + " / ".join(dict.fromkeys(p.split("; error_estimate")[0]
                                                          for p in provenance)))
    _reference_facts(doc, frame)
    part = board[board["task"] == task]
    if not part.empty:
        doc.heading(f"{task}: leaderboard per group", 3)
        doc.text(leaderboard.RULE)
        for (metric, group), rows in part.groupby(["metric", "group"], sort=False):
            doc.table(leaderboard.detail_table(rows),
                      collapsed=f"{aggregate.metric_title(metric)}, {group}")
    metrics = aggregate.metric_columns(frame)
    ranked = aggregate.final_time_rows(frame.assign(group=aggregate.group_labels(frame)))
    doc.heading(f"{task}: every metric at the ranking time", 3)
    doc.table(_metrics_table(ranked, metrics, published))
    task_figures(doc, task, frame, metrics)
    if task == "bayesian_logreg":
        _blr_section(doc, frame, metrics)
    _failures(doc, frame, info)
    full = _metrics_table(frame, metrics, published, all_times=True)
    if full["t"].nunique() > 1:
        doc.heading(f"{task}: every metric at every time", 3)
        doc.table(full, collapsed=f"{len(full)} rows: median [IQR] ±Monte Carlo error")


def _reference_facts(doc: Document, frame: pd.DataFrame) -> None:
    """A reference's own error as the rows state it (stationarity gap, grid refinement)."""
    if "reference_info" not in frame:
        return
    groups = aggregate.group_labels(frame)
    facts = frame.dropna(subset=["reference_info"]).drop_duplicates(["task_config", "seed", "t"])
    records = []
    for index, row in facts.iterrows():
        try:
            info = json.loads(row["reference_info"])
        except (TypeError, ValueError):
            continue
        if "stationarity_symkl" in info:
            records.append({"group": groups[index], "t": row["t"], **info})
    if not records:
        return
    table = pd.DataFrame(records).groupby(["group", "t"]).median(numeric_only=True).reset_index()
    table = table.iloc[sorted(range(len(table)), key=lambda i: (
        aggregate.natural_key(table["group"][i]), table["t"][i]))]
    doc.text("How far the flow still is from the reference ρ* at each time (an Euler–Maruyama "
             "estimate of ρ_t's mode masses, median over seeds): a solver that follows the "
             "flow exactly scores about this, not 0.")
    doc.table(pd.DataFrame({
        "group": table["group"], "t": table["t"].map(aggregate.format_number),
        "SymKL(ρ_t, ρ*)": table["stationarity_symkl"].map(aggregate.format_number),
        "energy(ρ_t, ρ*)": table["stationarity_energy"].map(aggregate.format_number),
        "mode-mass TV": table["stationarity_mode_mass_tv"].map(aggregate.format_number)}),
        collapsed="stationarity gap per dimension and time")


def _metrics_table(frame: pd.DataFrame, metrics: list[str], published: pd.DataFrame,
                   all_times: bool = False) -> pd.DataFrame:
    """Rows = solver × group (× t), columns = metrics in words: median [IQR] ±MC error."""
    frame = frame.assign(group=aggregate.group_labels(frame))
    summary = aggregate.summarise(frame, metrics + ["time_run"],
                                  keys=["task", "group", "label", "t"])
    first = frame.drop_duplicates(["label", "group"]).set_index(["label", "group"])
    rows = []
    for _, row in summary.iterrows():
        out: dict[str, Any] = {"solver": row["label"], "group": row["group"]}
        if all_times:
            out["t"] = aggregate.format_number(row["t"])
        out["runs ok/failed"] = f"{row['n_ok']}/{row['n_failed']}"
        out.update({aggregate.metric_title(m): aggregate.median_iqr(row, m, with_se=True)
                    for m in metrics})
        out["time [s]"] = aggregate.format_number(row["time_run_median"])
        if not published.empty:
            out["study"] = _published_for(row, published, first.loc[(row["label"],
                                                                     row["group"])])
        rows.append(out)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = sorted(range(len(table)), key=lambda i: (
        aggregate.natural_key(table["group"][i]), table["solver"][i],
        float(summary["t"][i])))
    return table.iloc[order].reset_index(drop=True)


#: what each ``bayesian_logreg`` protocol means, for the table headings
BLR_PROTOCOLS = {
    "gfbench": "each data set's own train/test split, z-scored features, intercept, "
               "prior rate 0.01",
    "study": "the original study's: rows pooled, a random 80/20 split (one per `split` "
             "value; the study scored one), features as stored, no intercept, prior rate "
             "100 — the protocol of the published numbers",
}
#: what a non-default ``bayesian_logreg`` state adds to the heading
BLR_STATES = {
    "non_centred": "; the state [v, log alpha] with w = v exp(-log alpha / 2): the same "
                   "posterior on w in a geometry ICNN-JKO can start from",
}


def _median_range(values: pd.Series) -> str:
    """``0.77 [0.74, 0.8]``: median and range over runs; the median alone for one run."""
    values = values.dropna()
    if values.empty:
        return "—"
    text = aggregate.format_number(values.median())
    if len(values) > 1:
        text += (f" [{aggregate.format_number(values.min())}, "
                 f"{aggregate.format_number(values.max())}]")
    return text


def _paired_differences(part: pd.DataFrame, dataset_col: str, metric: str,
                        baseline: str = "svgd") -> pd.DataFrame:
    """Per data set, each solver's ``metric`` minus ``baseline``'s on the same split and seed.

    Split-to-split spread (one test set of a few hundred rows) is larger than the
    differences between good samplers; pairing on (split, seed) removes it. Cells give
    median [min, max] of the differences; empty when ``baseline`` did not run.
    """
    keys = [dataset_col] + [c for c in ("task.split", "seed") if c in part.columns]
    base = part[part["label"] == baseline]
    if base.empty or metric not in part:
        return pd.DataFrame()
    base = base.groupby(keys)[metric].median().rename("baseline")
    others = part[part["label"] != baseline].join(base, on=keys, how="inner")
    if others.empty:
        return pd.DataFrame()
    others = others.assign(difference=others[metric] - others["baseline"])
    table = others.groupby([dataset_col, "label"])["difference"].agg(_median_range) \
        .unstack("label")
    table.columns = [f"{label} − {baseline} {metric} (same split)" for label in table.columns]
    return table


def _blr_section(doc: Document, frame: pd.DataFrame, metrics: list[str]) -> None:
    """Per protocol and data set, predictive metrics per solver beside the published Table 2."""
    dataset_col = next((c for c in ("task.dataset", "task.data") if c in frame.columns), None)
    if dataset_col is None:
        return
    ok = aggregate.final_time_rows(frame[frame["status"] == "ok"])
    predictive = [m for m in metrics if not m.startswith("symkl") and m not in
                  ("energy", "sliced_w2")]
    if ok.empty or not predictive:
        return
    # rows from before the protocol / state parameters existed used the defaults
    protocol = ok["task.protocol"].fillna("gfbench") if "task.protocol" in ok else \
        pd.Series("gfbench", index=ok.index)
    state = ok["task.state"].fillna("centred") if "task.state" in ok else \
        pd.Series("centred", index=ok.index)
    path = PUBLISHED_DIR / "published_blr.csv"
    published = pd.read_csv(path).drop(columns=["source"], errors="ignore") \
        if path.is_file() else None
    doc.heading("Bayesian logistic regression (original Table 2 beside ours)", 3)
    names = {"test_accuracy": ("accuracy", "accuracy"), "test_loglik": ("log_lik", "log-lik")}
    for (name, state_name), part in ok.groupby([protocol, state]):
        heading = name if state_name == "centred" else f"{name}, {state_name} state"
        about = BLR_PROTOCOLS.get(name, "unknown") + BLR_STATES.get(state_name, "")
        doc.text(f"Protocol `{heading}` ({about}); median "
                 "[min, max] over seeds and splits — one split's test set is small, so the "
                 "range shows how far a single published split can sit from the median.")
        # one table per metric, ours beside the published column of the same metric:
        # narrow enough to read, and no column that is empty for every data set
        for metric in predictive:
            table = part.groupby([dataset_col, "label"])[metric].agg(_median_range) \
                .unstack("label")
            short, title = names.get(metric, (metric, metric))
            if metric == "test_accuracy":
                paired = _paired_differences(part, dataset_col, metric)
                if not paired.empty:
                    paired.columns = [c.replace(f" {metric} (same split)", " (same split)")
                                      for c in paired.columns]
                    table = table.join(paired)
            table = table.fillna("—").reset_index().rename(columns={dataset_col: "dataset"})
            if published is not None:
                columns = {c: f"published {c.replace('_' + short, '')}"
                           for c in published.columns if c.endswith(short)}
                table = table.merge(published[["dataset", *columns]].astype(str)
                                    .rename(columns=columns), on="dataset", how="left") \
                    .fillna("—")
            doc.text(f"Test {title}:")
            doc.table(table)


def _failures(doc: Document, frame: pd.DataFrame, info: dict) -> None:
    """Failed runs, and ok runs whose ranking metric is ∞, invalid or missing where it applies."""
    failed = frame[frame["status"].isin(aggregate.FAILED_STATUSES)].drop_duplicates("run_id")
    flagged = []
    for metric in info.get("rankings", []):
        if metric not in frame:
            continue
        ok = frame[frame["status"] == "ok"]
        values = pd.to_numeric(ok[metric], errors="coerce")
        reasons = aggregate.invalid_reasons(ok, metric)
        for index, row in ok[np.isinf(values) & (reasons == "")].iterrows():
            note = store.note_for(row.get("metric_notes"), metric)
            flagged.append({**row.to_dict(), "status": f"ok, {metric} = ∞",
                            "error": note or f"{metric} is infinite"})
        for index, row in ok[reasons != ""].iterrows():
            flagged.append({**row.to_dict(), "status": f"ok, {metric} invalid",
                            "error": reasons[index]})
    if flagged:
        failed = pd.concat([failed, pd.DataFrame(flagged)], ignore_index=True)
    if failed.empty:
        return
    table = failed[["label", "task_config", "seed", "t", "status", "error"]].copy()
    table["error"] = table["error"].fillna("").astype(str).str.split("\n").str[0] \
        .str.slice(0, 160)
    doc.heading("Failed runs, infinite and invalid scores", 3)
    doc.text("Each is ranked as the worst value in its table; invalid values are not shown as "
             "scores.")
    doc.table(table.rename(columns={"label": "solver", "task_config": "task"}),
              collapsed=f"{len(table)} runs" if len(table) > 20 else None)


def write_report(dirs: list[Path], out: Path, frame: pd.DataFrame | None = None,
                 corrupt: list[Path] | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``report.html`` and ``figures/`` under ``out``.

    ``frame`` and ``corrupt`` (the unreadable run files, named in the report)
    are read from ``dirs`` when not given.

    Returns
    -------
    dict
        ``{"markdown": path, "html": path, "figures": [paths]}``.
    """
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if frame is None:
        frame, corrupt = store.load_checked(dirs)
    doc = Document(out / "figures")
    if frame.empty:
        doc.heading("gfbench report", 1)
        doc.text("No finished runs in " + ", ".join(map(str, dirs)) + ".")
    else:
        frame = frame.assign(label=aggregate.solver_labels(frame))
        _header(doc, frame, dirs, corrupt or [])
        board = leaderboard.build_leaderboard(frame)
        if not board.empty:
            _summary(doc, board)
        toc = doc.placeholder()
        published = published_medians()
        for task in sorted(frame["task"].unique(), key=_task_order):
            part = frame[frame["task"] == task].dropna(axis=1, how="all")
            _task_section(doc, task, part, board, published)
        entries = [(level, text, anchor) for level, text, anchor in doc.toc if level == 2
                   and text != "Summary"]
        doc.fill(toc, "## Contents\n\n" + "\n".join(f"- [{text}](#{anchor})"
                                                    for _, text, anchor in entries) + "\n",
                 '<nav><h2>Contents</h2><ul>' + "".join(
                     f'<li><a href="#{a}">{html.escape(t)}</a></li>' for _, t, a in entries)
                 + "</ul></nav>")
    md_path, html_path = out / "report.md", out / "report.html"
    store.atomic_write_text(md_path, "\n".join(doc.md))
    store.atomic_write_text(html_path, HTML_HEAD + "\n".join(doc.html) + "</body></html>\n")
    return {"markdown": md_path, "html": html_path, "figures": doc.figures}
