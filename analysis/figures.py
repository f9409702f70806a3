"""The report's figures: what each task's results look like, drawn with matplotlib.

Per task (:func:`task_figures`): the original study's figures (SymKL against
the dimension and against t, per estimator: Monte Carlo, grid and KDE SymKL
are never drawn on one axis), the cost–accuracy front (time per run on a log
axis, one colour per solver, points marked by their dimension), small
multiples of one seed's solver law against the reference (1-D histograms;
the reference's first two principal components above 1-D — the study's
Figure 3), and the filtering densities with their box plot.

Divergences and errors are drawn on symlog axes whose linear part (their
typical standard error) the caption states: their unbiased estimates read
0 ± noise near the reference, and no value is dropped without a count.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate, leaderboard
from analysis.document import Document, html_anchor

#: at most this many evaluation times per figure; more make them unreadable
MAX_TIMES = 4
SYMKL_METRICS = ("symkl", "symkl_grid", "symkl_kde")


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # reports are written headless (CI, clusters)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    return plt, sns


def _palette(labels, sns) -> dict[str, Any]:
    """One colour per solver label, the same in every figure of the report."""
    labels = sorted(set(labels), key=aggregate.natural_key)
    # qualitative palettes one after the other: a hue wheel ("husl") gives neighbouring
    # labels (variants of one solver) nearly the same colour once there are more than ten
    colours = (sns.color_palette("tab10") + sns.color_palette("Dark2")
               + sns.color_palette("Set1"))
    if len(labels) > len(colours):
        colours = sns.color_palette("husl", len(labels))
    return dict(zip(labels, colours))


def task_figures(doc: Document, task: str, frame: pd.DataFrame, metrics: list[str]) -> None:
    ok = frame[frame["status"] == "ok"]
    plt, sns = _plt()
    palette = _palette(frame["label"], sns)
    has_dim = "task.dim" in ok.columns and pd.to_numeric(ok["task.dim"], errors="coerce").nunique() > 1
    estimators = [m for m in SYMKL_METRICS if m in metrics]
    if has_dim:
        data = ok.assign(**{"task.dim": pd.to_numeric(ok["task.dim"])})
        times = _times_to_show(data)
        for metric in estimators + [m for m in ("energy",) if m in metrics]:
            _figure_vs(doc, data[data["t"].isin(times)], palette, "task.dim", "t", metric,
                       _symlog_metric(metric), f"{task}_{metric}_dim",
                       f"{task}: median {aggregate.metric_title(metric)} against the "
                       "dimension, one panel per time, band = interquartile range over seeds.")
        if data["t"].nunique() > 1:
            dims = sorted(data["task.dim"].unique())
            if len(dims) > MAX_TIMES:
                dims = [dims[i] for i in np.linspace(0, len(dims) - 1, MAX_TIMES).round()
                        .astype(int)]
            for metric in estimators:
                _figure_vs(doc, data[data["task.dim"].isin(dims)], palette, "t", "task.dim",
                           metric, _symlog_metric(metric), f"{task}_{metric}_t",
                           f"{task}: median {aggregate.metric_title(metric)} against t, "
                           f"one panel per dimension ({', '.join(str(int(d)) for d in dims)}).")
    for metric in leaderboard.ranking_metrics(task, frame):
        _cost_figure(doc, frame, palette, metric, f"{task}_{metric}_cost")
    _preview_figures(doc, task, frame, palette)
    _density_figures(doc, frame, task, palette)


def _times_to_show(frame: pd.DataFrame) -> list[float]:
    """At most MAX_TIMES evaluation times: the ones most solvers share, spread out."""
    counts = frame.groupby("t")["label"].nunique()
    shared = counts[counts == counts.max()].index.tolist()
    if len(shared) <= MAX_TIMES:
        return sorted(shared)
    picks = np.linspace(0, len(shared) - 1, MAX_TIMES).round().astype(int)
    return sorted(shared[i] for i in picks)


def _figure_vs(doc: Document, frame: pd.DataFrame, palette: dict, x: str, facet: str, y: str,
               log: bool, name: str, caption: str) -> None:
    """Median ``y`` against ``x`` per solver, one panel per ``facet`` value; ``log`` puts
    ``y`` on a symlog axis (values at or below 0 are drawn, not dropped)."""
    plt, sns = _plt()
    data = frame.assign(**{y: pd.to_numeric(frame[y], errors="coerce")}).dropna(subset=[y, x])
    n_infinite = int((~np.isfinite(data[y])).sum())
    data = data[np.isfinite(data[y])]
    if data.empty or data[x].nunique() < 2:
        return
    facets = sorted(data[facet].unique())
    fig, axes = plt.subplots(1, len(facets), figsize=(4.0 * len(facets), 3.3), squeeze=False,
                             sharey=True)
    labels = sorted(data["label"].unique(), key=aggregate.natural_key)
    for ax, value in zip(axes[0], facets):
        part = data[data[facet] == value]
        sns.lineplot(data=part, x=x, y=y, hue="label", palette=palette, estimator="median",
                     errorbar=("pi", 50), marker="o", ax=ax, legend=False)
        ax.set_title(f"{facet.replace('task.', '')} = {aggregate.format_number(value)}")
        ax.set_xlabel(x.replace("task.", ""))
        ax.set_ylabel(aggregate.metric_title(y) + (" (symlog)" if log else ""))
    if log:
        caption += _symlog_axes(axes[0], data[y], data.get(f"{y}_se"), "values")
    caption += _not_shown(n_infinite, "runs with an infinite value")
    handles = [plt.Line2D([], [], color=palette[label], marker="o", label=label)
               for label in labels]
    axes[0][-1].legend(handles=handles, bbox_to_anchor=(1.02, 1.0), loc="upper left",
                       fontsize="small", title="solver")
    doc.figure(fig, name, caption)


def _cost_figure(doc: Document, frame: pd.DataFrame, palette: dict, metric: str,
                 name: str) -> None:
    """Median metric against median run time (log axis), one colour per solver, points
    marked by their dimension (or data set); a divergence on a symlog axis, a predictive
    metric (accuracy, log-likelihood: any sign) on a linear one."""
    plt, sns = _plt()
    ok = frame[frame["status"] == "ok"]
    ok = aggregate.final_time_rows(ok.assign(group=aggregate.group_labels(ok)))
    data = ok.assign(value=pd.to_numeric(ok[metric], errors="coerce"),
                     seconds=pd.to_numeric(ok["time_run"], errors="coerce")
                     + pd.to_numeric(ok["time_setup"], errors="coerce"))
    data = data.dropna(subset=["value"])
    # medians of every value (∞ included) first: dropping values before would bias them
    data = data.groupby(["label", "group"], as_index=False)[["value", "seconds"]].median()
    drawable = np.isfinite(data["value"]) & (data["seconds"] > 0)
    n_hidden = int((~drawable).sum())
    data = data[drawable]
    if data.empty:
        return
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for label, part in data.groupby("label"):
        part = part.iloc[sorted(range(len(part)), key=lambda i: aggregate.natural_key(
            part["group"].iloc[i]))]
        ax.plot(part["seconds"], part["value"], "-o", color=palette[label], label=label,
                lw=0.8, ms=4, alpha=0.9)
        for _, row in part.iterrows():
            ax.annotate(_short_group(row["group"]), (row["seconds"], row["value"]),
                        fontsize=6, xytext=(2, 2), textcoords="offset points",
                        color=palette[label])
    ax.set_xscale("log")  # run times span milliseconds to minutes
    ax.set_xlabel("median time per run (set-up + solve) [s], log scale")
    ax.set_ylabel(f"median {aggregate.metric_title(metric)}")
    ax.legend(bbox_to_anchor=(1.02, 1.0), loc="upper left", fontsize="small", title="solver")
    caption = (f"Cost–accuracy: {aggregate.metric_title(metric)} against time per run (log "
               "axis); one colour per solver, each point one dimension or data set (its "
               "label), median over seeds at the ranking time.")
    if _symlog_metric(metric):
        ax.set_ylabel(f"median {aggregate.metric_title(metric)} (symlog)")
        caption += _symlog_axes([ax], data["value"], ok.get(f"{metric}_se"), "medians")
    else:
        caption += f" The {aggregate.metric_title(metric)} axis is linear."
    doc.figure(fig, name, caption + _not_shown(n_hidden, "entries with an infinite median "
                                                         "or no run time"))


def _symlog_metric(metric: str) -> bool:
    """Whether ``metric`` is drawn on a symlog axis: a divergence or error (best value 0),
    whose values span decades and whose unbiased estimates read 0 ± noise near 0."""
    return aggregate.lower_is_better(metric) and aggregate.metric_lower_bound(metric) == 0


def _linear_threshold(values: pd.Series, se: pd.Series | None) -> tuple[float, str]:
    """Where a symlog axis turns linear, and why there.

    The values' median Monte Carlo standard error: within it of 0 a value is noise
    around 0, which a log scale would stretch over decades. A deterministic metric
    (no standard error) turns at its smallest positive value, so that every positive
    value is drawn logarithmically. Either is rounded to a power of ten (the standard
    error to the nearest, the smallest value down).
    """
    se = pd.to_numeric(se, errors="coerce") if se is not None else pd.Series(dtype=float)
    se = se[np.isfinite(se) & (se > 0)]
    positive = values[np.isfinite(values) & (values > 0)]
    if len(se):
        value = float(se.median())
        why, rounding = "the median Monte Carlo standard error", np.round
    elif len(positive):
        # rounded down: the smallest value must stay on the logarithmic part
        value, why, rounding = float(positive.min()), "the smallest positive value", np.floor
    else:
        return 1.0, "no value above 0"
    # a power of ten: the axis's decade ticks then start where it turns
    threshold = float(10.0 ** rounding(np.log10(value)))
    return threshold, f"{why}, {value:.1g}, to a power of ten"


def _symlog_axes(axes, values: pd.Series, se: pd.Series | None, what: str) -> str:
    """Put ``axes`` on one symlog y scale for ``values``; the caption's sentence on it."""
    threshold, why = _linear_threshold(values, se)
    for ax in axes:
        ax.set_yscale("symlog", linthresh=threshold)
        ax.axhspan(-threshold, threshold, color="0.93", lw=0, zorder=0)
    n_low = int((values <= 0).sum())
    text = (f" Symlog axis: linear within ±{threshold:g} (grey band; "
            f"{why}), logarithmic beyond")
    return text + (f", so the {n_low} {what} ≤ 0 are drawn too." if n_low else ".")


def _not_shown(count: int, what: str) -> str:
    """The caption's count of what a figure could not draw ('' when nothing)."""
    return f" Not shown: {what} ({count})." if count else ""


def _short_group(group: str) -> str:
    """``dim=12`` → ``12``; ``dataset=german, protocol=study`` → ``german study``."""
    parts = [p.split("=", 1)[-1] for p in str(group).split(", ")]
    return " ".join(parts)


def _preview_figures(doc: Document, task: str, frame: pd.DataFrame, palette: dict) -> None:
    """Small multiples: each solver's law (seed 0, last time) against the reference."""
    if "preview" not in frame:
        return
    rows = frame[(frame["status"] == "ok")].dropna(subset=["preview"])
    if rows.empty:
        return
    rows = rows.assign(group=aggregate.group_labels(rows))
    groups = sorted(rows["group"].unique(), key=aggregate.natural_key)
    if len(groups) > 3:  # the smallest, a middle and the largest configuration
        groups = [groups[0], groups[len(groups) // 2], groups[-1]]
    plt, _ = _plt()
    for group in groups:
        part = rows[rows["group"] == group].drop_duplicates("label")
        part = part.iloc[sorted(range(len(part)), key=lambda i: aggregate.natural_key(
            part["label"].iloc[i]))]
        n = len(part)
        cols = min(n, 5)
        nrows = -(-n // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(2.6 * cols, 2.4 * nrows), squeeze=False,
                                 sharex=True, sharey=True)
        one_d = None
        for ax, (_, row) in zip(axes.flat, part.iterrows()):
            data = json.loads(row["preview"])
            ref, sol = np.asarray(data["reference"]), np.asarray(data["solver"])
            one_d = ref.shape[1] == 1
            if one_d:
                bins = np.linspace(min(ref.min(), sol.min()), max(ref.max(), sol.max()), 40)
                ax.hist(ref[:, 0], bins=bins, density=True, color="0.8", label="reference")
                ax.hist(sol[:, 0], bins=bins, density=True, histtype="step",
                        color=palette[row["label"]], lw=1.4)
            else:
                ax.scatter(ref[:, 0], ref[:, 1], s=2, color="0.75", label="reference")
                ax.scatter(sol[:, 0], sol[:, 1], s=2, color=palette[row["label"]], alpha=0.7)
            ax.set_title(row["label"], fontsize=8)
            ax.set_xlabel("x" if one_d else "PC 1", fontsize=7)
            ax.set_ylabel("density" if one_d else "PC 2", fontsize=7)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        kind = ("histograms" if one_d else "the reference's first two principal components "
                "(grey: reference)")
        t = aggregate.format_number(part["t"].iloc[0])
        doc.figure(fig, f"{task}_preview_{html_anchor(group)}",
                   f"{task}, {group}: each solver's law (seed 0, t = {t}) against the reference, "
                   f"500 points each, {kind}.")


def _density_figures(doc: Document, frame: pd.DataFrame, task: str, palette: dict) -> None:
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
        ax.plot(curve["x"], curve["solver"], label=label, lw=1.2, color=palette[label])
    ax.set_xlabel("x")
    ax.set_ylabel(f"density at t = {aggregate.format_number(t_final)}")
    ax.legend(bbox_to_anchor=(1.02, 1.0), loc="upper left", fontsize="small")
    doc.figure(fig, f"{task}_densities", f"{task}: densities of seed {seed} over the reference.")
    metric = "symkl_grid" if "symkl_grid" in ok else "symkl"
    values = ok[ok["t"] == t_final].assign(symkl=pd.to_numeric(ok[metric], errors="coerce"))
    values = values.dropna(subset=["symkl"])
    n_infinite = int(np.isinf(values["symkl"]).sum())
    values = values[np.isfinite(values["symkl"])]
    if values["label"].nunique() >= 1 and len(values) > 1:
        fig, ax = plt.subplots(figsize=(6.5, 3.4))
        sns.boxplot(data=values, x="label", y="symkl", ax=ax, color="0.8")
        # no jitter: a random jitter would make the figure differ on every export
        sns.stripplot(data=values, x="label", y="symkl", ax=ax, size=3, color="k", jitter=False)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylabel(aggregate.metric_title(metric) + " (symlog)")
        caption = (f"{task}: {aggregate.metric_title(metric)} to the reference over seeds."
                   + _symlog_axes([ax], values["symkl"], values.get(f"{metric}_se"), "values")
                   + _not_shown(n_infinite, "infinite values"))
        doc.figure(fig, f"{task}_symkl_box", caption)
