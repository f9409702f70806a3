"""``gfbench report``: Markdown and self-contained HTML from results directories.

Per task: a table of median [IQR] of every metric per solver configuration ×
task configuration × t, with n_ok / n_failed and, where the original study
published a number for the cell, that number beside ours; figures of log10
SymKL against dimension (the original Figures 2 and 4), against t (Figure 6),
metric against wall time (the cost–accuracy front), filtering densities and
the SymKL box plot (Figure 5), and the logistic-regression table beside the
published Table 2. The HTML embeds its figures, so it can be mailed or
attached to a CI run as one file.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runners import aggregate, registry, store

PUBLISHED_DIR = Path(__file__).resolve().parents[1] / "results"
#: at most this many evaluation times per table/figure; more make them unreadable
MAX_TIMES = 4
SYMKL_METRICS = ("symkl", "symkl_kde", "symkl_grid")


# --- small writers -----------------------------------------------------------
def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown table of ``frame`` (values as strings)."""
    if frame.empty:
        return "_(no rows)_\n"
    cells = frame.astype(str).map(lambda s: s.replace("|", "\\|").replace("\n", " "))
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


class _Document:
    """Accumulates the same content as Markdown and as HTML."""

    def __init__(self, figure_dir: Path) -> None:
        self.md: list[str] = []
        self.html: list[str] = []
        self.figure_dir = figure_dir
        self.figures: list[Path] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame) -> None:
        self.md.append(markdown_table(frame))
        self.html.append(frame.to_html(index=False, escape=True, border=0, na_rep="—"))

    def figure(self, fig, name: str, caption: str) -> None:
        path = self.figure_dir / f"{name}.png"
        store.atomic_write_bytes(path, lambda p: fig.savefig(p, format="png", dpi=110,
                                                             bbox_inches="tight"))
        _close(fig)
        self.figures.append(path)
        self.md.append(f"![{caption}](figures/{path.name})\n\n_{caption}_\n")
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # reports are written headless (CI, clusters)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


# --- published numbers ---------------------------------------------------------
def published_medians(directory: Path = PUBLISHED_DIR) -> pd.DataFrame:
    """The original study's medians we compare against (empty if not shipped)."""
    path = directory / "published_medians.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _published_for(row: pd.Series, published: pd.DataFrame, frame_row: pd.Series) -> str:
    """Published SymKL for a summary row, as ``value (metric)``, or ''."""
    if published.empty:
        return ""
    match = published[(published["task"] == row["task"]) & (published["solver"] == row["solver"])
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


# --- sections ----------------------------------------------------------------------
def _times_to_show(frame: pd.DataFrame, published: pd.DataFrame) -> list[float]:
    times = sorted(frame["t"].unique())
    if len(times) <= MAX_TIMES:
        return times
    task = frame["task"].iloc[0]
    chosen = set()
    if not published.empty:
        for t in published.loc[published["task"] == task, "t"].unique():
            chosen |= {x for x in times if np.isclose(x, t)}
    chosen.add(times[-1])
    for t in np.quantile(times, [0.0, 0.5]):
        if len(chosen) >= MAX_TIMES:
            break
        chosen.add(min(times, key=lambda x: abs(x - t)))
    return sorted(chosen)[:MAX_TIMES]


def _task_table(frame: pd.DataFrame, metrics: list[str], published: pd.DataFrame) -> pd.DataFrame:
    summary = aggregate.summarise(frame, metrics + ["time_run"])
    first_rows = frame.drop_duplicates(["label", "task_config"]).set_index(["label", "task_config"])
    rows = []
    for _, row in summary.iterrows():
        frame_row = first_rows.loc[(row["label"], row["task_config"])]
        out: dict[str, Any] = {"solver": row["label"], "task": row["task_config"],
                               "t": aggregate.format_number(row["t"]),
                               "ok/failed": f"{row['n_ok']}/{row['n_failed']}"}
        out.update({m: aggregate.median_iqr(row, m) for m in metrics})
        out["time_run [s]"] = aggregate.format_number(row["time_run_median"])
        if not published.empty:
            out["published"] = _published_for(row, published, frame_row)
        rows.append(out)
    table = pd.DataFrame(rows)
    order = sorted(range(len(table)), key=lambda i: (aggregate.natural_key(table["task"][i]),
                                                     table["solver"][i], float(summary["t"][i])))
    table = table.iloc[order].reset_index(drop=True)
    if "published" in table and not table["published"].astype(bool).any():
        table = table.drop(columns="published")
    return table


def _figure_vs(doc: _Document, frame: pd.DataFrame, task: str, x: str, facet: str,
               y: str, ylabel: str, log: bool, name: str, caption: str) -> None:
    plt, sns = _plt()
    data = frame.dropna(subset=[y, x])
    if log:
        data = data[data[y] > 0].assign(**{y: lambda d: np.log10(d[y])})
    if data.empty or data[x].nunique() < 2:
        return
    facets = sorted(data[facet].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.2 * len(facets), 3.4), squeeze=False,
                             sharey=True)
    # one colour per solver across all panels, and one legend listing every solver
    labels = sorted(data["label"].unique(), key=aggregate.natural_key)
    palette = dict(zip(labels, sns.color_palette("tab10" if len(labels) <= 10 else "husl",
                                                 len(labels))))
    for ax, value in zip(axes[0], facets):
        part = data[data[facet] == value]
        sns.lineplot(data=part, x=x, y=y, hue="label", palette=palette, estimator="median",
                     errorbar=("pi", 50), marker="o", ax=ax, legend=False)
        ax.set_title(f"{facet.replace('task.', '')} = {aggregate.format_number(value)}")
        ax.set_xlabel(x.replace("task.", ""))
        ax.set_ylabel(("log10 " if log else "") + ylabel)
    handles = [plt.Line2D([], [], color=palette[label], marker="o", label=label)
               for label in labels]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1.0), loc="upper left",
                       fontsize="small", title="solver")
    doc.figure(fig, name, caption)


def _cost_figure(doc: _Document, frame: pd.DataFrame, metric: str, name: str) -> None:
    plt, sns = _plt()
    ok = aggregate.final_time_rows(frame[frame["status"] == "ok"])
    data = ok.assign(value=pd.to_numeric(ok[metric], errors="coerce")).dropna(subset=["value"])
    data = data.groupby(["label", "task_config"], as_index=False)[["value", "time_run"]].median()
    if data.empty:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.scatterplot(data=data, x="time_run", y="value", hue="label", style="label", s=50, ax=ax)
    ax.set_xscale("log")
    if (data["value"] > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("median run time [s]")
    ax.set_ylabel(f"median {metric} at final t")
    ax.legend(bbox_to_anchor=(1.02, 1.0), loc="upper left")
    doc.figure(fig, name, f"Cost–accuracy: {metric} against run time, one point per solver and "
                          "task configuration (median over seeds).")


def _density_figures(doc: _Document, frame: pd.DataFrame, task: str) -> None:
    """Densities of one seed over the reference, and the SymKL box plot (Figure 5)."""
    plt, sns = _plt()
    ok = frame[(frame["status"] == "ok")]
    if "curve" not in ok.columns or ok["curve"].isna().all():
        return
    with_curve = ok.dropna(subset=["curve"])
    t_final = with_curve["t"].max()
    with_curve = with_curve[with_curve["t"] == t_final]
    seed = with_curve["seed"].min()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    reference_drawn = False
    for label, part in with_curve[with_curve["seed"] == seed].groupby("label"):
        curve = json.loads(part["curve"].iloc[0])
        if not reference_drawn:
            ax.fill_between(curve["x"], curve["reference"], color="0.85", label="reference")
            reference_drawn = True
        ax.plot(curve["x"], curve["solver"], label=label, lw=1.2)
    ax.set_xlabel("x")
    ax.set_ylabel(f"density at t = {aggregate.format_number(t_final)}")
    ax.legend(bbox_to_anchor=(1.02, 1.0), loc="upper left", fontsize="small")
    doc.figure(fig, f"{task}_densities", f"{task}: densities of seed {seed} over the reference.")
    metric = "symkl_grid" if "symkl_grid" in ok else "symkl"
    values = ok[ok["t"] == t_final].assign(symkl=pd.to_numeric(ok[metric], errors="coerce"))
    values = values.dropna(subset=["symkl"])
    values = values[values["symkl"] > 0]
    if values["label"].nunique() >= 1 and len(values) > 1:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        sns.boxplot(data=values, x="label", y="symkl", ax=ax, color="0.8", log_scale=True)
        sns.stripplot(data=values, x="label", y="symkl", ax=ax, size=3, color="k")
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylabel(aggregate.metric_title(metric))
        doc.figure(fig, f"{task}_symkl_box", f"{task}: SymKL to the reference over seeds.")


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


def _blr_section(doc: _Document, frame: pd.DataFrame, metrics: list[str]) -> None:
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
    for (name, state_name), part in ok.groupby([protocol, state]):
        table = part.groupby([dataset_col, "label"])[predictive].agg(_median_range) \
            .unstack("label")
        table.columns = [f"{label} {metric}" for metric, label in table.columns]
        paired = _paired_differences(part, dataset_col, "test_accuracy")
        if not paired.empty:
            table = table.join(paired)
        table = table.fillna("—").reset_index().rename(columns={dataset_col: "dataset"})
        if published is not None:
            table = table.merge(
                published.astype(str).rename(columns={c: f"published {c}"
                                                      for c in published.columns
                                                      if c != "dataset"}),
                on="dataset", how="left").fillna("—")
        heading = name if state_name == "centred" else f"{name}, {state_name} state"
        about = BLR_PROTOCOLS.get(name, "unknown") + BLR_STATES.get(state_name, "")
        doc.text(f"Protocol `{heading}` ({about}); median "
                 "[min, max] over seeds and splits — one split's test set is small, so the "
                 "range shows how far a single published split can sit from the median:")
        doc.table(table)


def _failures(doc: _Document, frame: pd.DataFrame) -> None:
    """Failed runs, and ok runs whose ranking metric is infinite (a catastrophe, not n/a)."""
    failed = frame[frame["status"].isin(aggregate.FAILED_STATUSES)].drop_duplicates("run_id")
    task_cls = registry.tasks().get(frame["task"].iloc[0])
    infinite = []
    for metric in (task_cls.rankings() if task_cls is not None else ()):
        if metric in frame:
            rows = frame[(frame["status"] == "ok")
                         & np.isinf(pd.to_numeric(frame[metric], errors="coerce"))]
            for _, row in rows.iterrows():
                note = store.note_for(row.get("metric_notes"), metric)
                infinite.append({**row.to_dict(), "status": f"ok, {metric} = ∞",
                                 "error": note or f"{metric} is infinite"})
    if infinite:
        failed = pd.concat([failed, pd.DataFrame(infinite)], ignore_index=True)
    if failed.empty:
        return
    table = failed[["label", "task_config", "seed", "t", "status", "error"]].copy()
    table["error"] = table["error"].fillna("").astype(str).str.split("\n").str[0] \
        .str.slice(0, 160)
    doc.heading("Failed runs and infinite scores", 3)
    doc.table(table.rename(columns={"label": "solver", "task_config": "task"}))


def _task_section(doc: _Document, task: str, frame: pd.DataFrame,
                  published: pd.DataFrame) -> None:
    metrics = aggregate.metric_columns(frame)
    task_cls = registry.tasks().get(task)
    doc.heading(f"Task `{task}`", 2)
    if task_cls is not None and task_cls.description:
        doc.text(task_cls.description)
    counts = frame.drop_duplicates("run_id")["status"].value_counts().to_dict()
    doc.text("Runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".")
    provenance = frame["reference_provenance"].dropna().unique() \
        if "reference_provenance" in frame else []
    if len(provenance):
        doc.text("Reference: " + "; ".join(map(str, provenance[:3])))
    times = _times_to_show(frame, published)
    shown = frame[frame["t"].isin(times)]
    doc.table(_task_table(shown, metrics, published))
    ok = shown[shown["status"] == "ok"]
    # one estimator per axis: Monte Carlo, grid and KDE SymKL differ in bias by orders of magnitude
    estimators = [m for m in SYMKL_METRICS if m in metrics]
    if "task.dim" in ok.columns and ok["task.dim"].nunique() > 1:
        ok = ok.assign(**{"task.dim": pd.to_numeric(ok["task.dim"])})
        for metric in estimators:
            _figure_vs(doc, ok, task, "task.dim", "t", metric, aggregate.metric_title(metric),
                       True, f"{task}_{metric}_dim",
                       f"{task}: median log10 {aggregate.metric_title(metric)} against dimension, "
                       "band = IQR over seeds (values <= 0, e.g. the oracle's exact 0, are not "
                       "drawn).")
        if "energy" in metrics:
            _figure_vs(doc, ok, task, "task.dim", "t", "energy", "energy distance", False,
                       f"{task}_energy_dim",
                       f"{task}: energy distance against dimension (density-free).")
    all_ok = frame[frame["status"] == "ok"]
    if all_ok["t"].nunique() > 1:
        facet = "task.dim" if "task.dim" in all_ok.columns else "task_config"
        dims = sorted(all_ok[facet].unique())
        if len(dims) > MAX_TIMES:
            dims = [dims[i] for i in np.linspace(0, len(dims) - 1, MAX_TIMES).round().astype(int)]
        for metric in estimators:
            _figure_vs(doc, all_ok[all_ok[facet].isin(dims)], task, "t", facet, metric,
                       aggregate.metric_title(metric), True, f"{task}_{metric}_t",
                       f"{task}: median log10 {aggregate.metric_title(metric)} against t per "
                       "dimension.")
    task_cls = registry.tasks().get(task)
    rankings = task_cls.rankings() if task_cls is not None else ()
    for metric in [m for m in rankings if m in metrics]:
        _cost_figure(doc, frame, metric, f"{task}_{metric}_cost")
    _density_figures(doc, frame, task)
    if task == "bayesian_logreg":
        _blr_section(doc, frame, metrics)
    _failures(doc, frame)


def _header(doc: _Document, frame: pd.DataFrame, dirs: list[Path]) -> None:
    doc.heading("gfbench report", 1)
    runs = frame.drop_duplicates("run_id")
    def values(column: str) -> str:
        return ", ".join(sorted(map(str, runs[column].dropna().unique()))) \
            if column in runs else "—"
    doc.text(f"Results: {', '.join(map(str, dirs))}. {len(runs)} runs, {len(frame)} rows. "
             f"gfbench {values('gfbench_version')}, git {values('git_sha')}, "
             f"torch {values('torch')}, numpy {values('numpy')}; hosts: {values('host')}; "
             f"devices: {values('device')}.")
    metrics = registry.metrics()
    described = [f"{name}: {m.description}" for name, m in metrics.items()
                 if name in aggregate.metric_columns(frame)]
    if described:
        doc.text("Metrics (median [IQR] over seeds; ok runs only). " + " | ".join(described))


HTML_HEAD = """<!doctype html><html><head><meta charset="utf-8"><title>gfbench report</title>
<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}
td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}
figure{margin:1em 0}img{max-width:100%}figcaption{font-size:0.85em;color:#555}</style>
</head><body>"""


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
    doc = _Document(out / "figures")
    if corrupt:
        doc.text(f"Warning: {len(corrupt)} unreadable run files (corrupt, partial or foreign) "
                 "are left out of everything below: " + ", ".join(p.name for p in corrupt) + ".")
    if frame.empty:
        doc.heading("gfbench report", 1)
        doc.text("No finished runs in " + ", ".join(map(str, dirs)) + ".")
    else:
        frame = frame.assign(label=aggregate.solver_labels(frame))
        _header(doc, frame, dirs)
        published = published_medians()
        for task, part in frame.groupby("task", sort=True):
            _task_section(doc, task, part.dropna(axis=1, how="all"), published)
    md_path, html_path = out / "report.md", out / "report.html"
    store.atomic_write_text(md_path, "\n".join(doc.md))
    store.atomic_write_text(html_path, HTML_HEAD + "\n".join(doc.html) + "</body></html>\n")
    return {"markdown": md_path, "html": html_path, "figures": doc.figures}
