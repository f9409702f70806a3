"""``gfbench leaderboard``: rank solver configurations per task, metric and group.

A *table* is one (task, ranking metric, group) at the task's ranking time,
where the group is the task configuration without its replicate parameters
(``dim=4``; ``dataset=german, protocol=study`` with its random splits pooled).
An *entry* is one solver configuration; its replicates are its (seed, split)
runs, each with a value and that value's Monte Carlo standard error.

Which metrics rank (``Task.rankings()``): the task's shared sample-distance
metric for every solver, and, for the solvers with a density, Monte Carlo
SymKL in a table of its own. Estimators with different biases (KDE SymKL)
never share a ranking.

Rank = 1 + the number of entries that are *clearly better*. Entry j is
clearly better than entry i when, over the replicates they share (paired:
same task instance, same reference draws), the 99 % interval of the median
difference lies entirely on j's side; the interval resamples the replicates
and adds each difference's Monte Carlo noise, so a single replicate is
judged on its standard errors and many replicates on their consistency. No
entry is clearly better than one that is within noise of the metric's lower
bound (the value the exact law attains, 0 for a divergence): the oracle, at
its floor, can tie but never lose. Where a metric is biased up by sample size
(a covariance error, a particle set's energy), an entry's floor is the exact
law's score with as many draws (its ``*_floor``), capped at the oracle's:
more draws than the oracle do not beat it, fewer earn no credit. Infinite
values rank behind every finite one, and entries whose runs all failed
rank last, with their status.

Ties are broken by the task's other ranking metrics, in the task's order,
and only by evidence: two entries that the table's metric cannot separate
are compared with the same paired test on the next metric for which both
have valid values (∞ included, invalid values and failed runs left out), and
so on. The energy distance of every good OU solver (~1e-4) is below its own
noise (~5e-4 at 4096 draws), while Monte Carlo SymKL separates the density
solvers, so the energy table orders them by SymKL without ever ranking a
particle set, which has no density, below anyone it ties on energy. The
floor rule holds on every metric of the chain: the oracle, at the floor of
each, stays rank 1. Entries that both fail on the table's metric (failed, ∞
or invalid) stay tied, last. Each entry's note names the metric that placed it below
a tied entry and, for every remaining tie, why each metric left it a tie.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import aggregate
from analysis.document import markdown_table
from execution import store

#: level of the paired intervals that separate two entries
RANK_LEVEL = 0.99
#: level of the interval shown beside each median
SHOW_LEVEL = 0.9
#: the solver whose runs are draws of the reference law itself
ORACLE = "exact"
Z_FLOOR = 2.576  # within this many standard errors of the lower bound = at the floor
#: the note of an entry alone in its table
SOLE_ENTRY = "sole entry: nothing ranked against it, not counted as a win"


def ranking_metrics(task: str, frame: pd.DataFrame, override: str | None = None) -> list[str]:
    """The metrics ``task`` is ranked on that have values in ``frame`` (primary first)."""
    available = aggregate.metric_columns(frame)
    if override:
        return [override] if override in available else []
    wanted = aggregate.task_info(task).get("rankings", ["energy"])
    return [m for m in wanted if m in available]


def primary_metric(task: str, frame: pd.DataFrame, override: str | None = None) -> str | None:
    """The first metric ``task`` is ranked on, if present."""
    metrics = ranking_metrics(task, frame, override)
    return metrics[0] if metrics else None


# --- the ranking rule ---------------------------------------------------------------------
def _signed(values: np.ndarray, lower_is_better: bool) -> np.ndarray:
    """Values oriented so that smaller is better."""
    return values if lower_is_better else -values


def clearly_better(j: pd.DataFrame, i: pd.DataFrame, lower_is_better: bool,
                   level: float = RANK_LEVEL, seed: int = 0) -> bool:
    """Whether entry ``j`` beats entry ``i`` beyond noise on their shared replicates.

    ``j`` and ``i`` hold ``value`` and ``se`` indexed by replicate key.
    """
    shared = j.index.intersection(i.index)
    if shared.empty:
        return False
    a = _signed(j.loc[shared, "value"].to_numpy(float), lower_is_better)
    b = _signed(i.loc[shared, "value"].to_numpy(float), lower_is_better)
    with np.errstate(invalid="ignore"):
        diff = a - b
    diff = np.where(np.isnan(diff) & np.isinf(a) & np.isinf(b), 0.0, diff)  # ∞ − ∞: a tie
    se = np.hypot(j.loc[shared, "se"].to_numpy(float), i.loc[shared, "se"].to_numpy(float))
    keep = ~np.isnan(diff)
    if not keep.any():
        return False
    medians = aggregate._bootstrap_medians(diff[keep], np.where(np.isnan(se[keep]), np.inf,
                                                                se[keep]), 2000, seed)
    # an order statistic, not an interpolation: medians may be infinite
    return bool(np.quantile(medians, 1.0 - (1.0 - level) / 2.0, method="higher") < 0.0)


def at_floor(entry: pd.DataFrame, lower_bound: float | None, lower_is_better: bool) -> bool:
    """Whether an entry is within noise of the best value its metric can take.

    The entry's whole interval must be: the upper end of its 90 % interval of
    the median (replicate spread and Monte Carlo error) may exceed the bound
    by at most :data:`Z_FLOOR` typical standard errors. A wide spread of
    seeds that merely *touches* the floor does not tie it. Where the entry
    carries a ``floor`` column (the metric's ``*_floor``: the exact law's
    score at the runs' own sample size, capped at the oracle's by
    :func:`_cap_floors`) on every replicate, the bound is the median of it
    when higher: a metric biased up by sampling floors each sample size at
    its own value, so the oracle with 8192 draws is not beaten by a particle
    set of 10⁴ merely for having fewer draws, while a set of 10³ is held to
    the oracle's floor.
    """
    if lower_bound is None or not lower_is_better or entry.empty:
        return False
    values, se = entry["value"].to_numpy(float), entry["se"].to_numpy(float)
    if not np.isfinite(values).all():
        return False
    if "floor" in entry:
        # a sample-size floor (what the exact law scores with as many draws as the
        # entry's runs: a relative covariance error of N exact draws is ~sqrt(D/N))
        # is the best value these runs could attain, so it is their bound
        floor = entry["floor"].to_numpy(float)
        if np.isfinite(floor).all():
            lower_bound = max(lower_bound, float(np.median(floor)))
    _, high = aggregate.bootstrap_median_interval(values, se, SHOW_LEVEL,
                                                  lower_bound=lower_bound)
    noise = float(np.median(np.where(np.isnan(se), 0.0, se)))
    return bool(high <= lower_bound + Z_FLOOR * noise)


@dataclass(frozen=True)
class Criterion:
    """One metric of a table's ranking chain, with each entry's replicates on it.

    Parameters
    ----------
    metric : str
        The metric's name, as the notes print it.
    entries : dict of str to DataFrame
        Per entry label, ``value`` and ``se`` indexed by replicate key. An
        entry missing here has no valid value of this metric: it is never
        compared on it, so it neither wins nor loses by it.
    lower_is_better : bool
        Direction of the metric.
    lower_bound : float or None
        The metric's floor (what the exact law scores), if it has one.
    """

    metric: str
    entries: dict[str, pd.DataFrame] = field(default_factory=dict)
    lower_is_better: bool = True
    lower_bound: float | None = None


def rank_entries(entries: dict[str, pd.DataFrame], lower_is_better: bool,
                 lower_bound: float | None = None,
                 tiebreaks: tuple[Criterion, ...] = ()) -> dict[str, int]:
    """Competition ranks: 1 + the number of entries clearly better than each one."""
    return rank_with_reasons(entries, lower_is_better, lower_bound, tiebreaks)[0]


def _pair_verdict(a: str, b: str, chain: list[Criterion], floors: list[dict[str, bool]]
                  ) -> tuple[str | None, int]:
    """Which of ``a``, ``b`` is clearly better, on the first metric of ``chain`` that
    separates them, and that metric's position; ``(None, len(chain))`` for a tie on all.

    A metric separates a pair only if both have valid values on shared replicates
    and one is clearly better than the other, who is not at that metric's floor.
    Two entries that both fail on the table's metric (median at its worst value:
    failed, ∞ or invalid) stay tied, last: a failure is not ranked among failures
    by another metric.
    """
    for k, criterion in enumerate(chain):
        ea, eb = criterion.entries.get(a), criterion.entries.get(b)
        if ea is None or eb is None or ea.index.intersection(eb.index).empty:
            continue  # nothing to pair on: this metric says nothing about the two
        if not floors[k][b] and clearly_better(ea, eb, criterion.lower_is_better):
            return a, k
        if not floors[k][a] and clearly_better(eb, ea, criterion.lower_is_better):
            return b, k
        if k == 0 and _fails(ea, criterion) and _fails(eb, criterion):
            return None, 0
    return None, len(chain)


def _fails(entry: pd.DataFrame, criterion: Criterion) -> bool:
    """Whether an entry's median on ``criterion`` is the metric's worst value."""
    worst = np.inf if criterion.lower_is_better else -np.inf
    return bool(np.median(entry["value"].to_numpy(float)) == worst)


def _tie_reason(i: str, j: str, criterion: Criterion, floor: dict[str, bool]) -> str:
    """Why ``criterion``'s metric left ``i`` tied with ``j``, seen from ``i``."""
    ei, ej = criterion.entries.get(i), criterion.entries.get(j)
    if ei is None:
        return f"{criterion.metric}: none valid here"
    if ej is None:
        return f"{criterion.metric}: none valid for them"
    if ei.index.intersection(ej.index).empty:
        return f"{criterion.metric}: no shared replicate"
    if floor[i]:
        return f"{criterion.metric}: within noise of the floor"
    return f"{criterion.metric}: paired {RANK_LEVEL:.0%} interval includes 0"


def _names(labels: list[str]) -> str:
    return ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")


def rank_with_reasons(entries: dict[str, pd.DataFrame], lower_is_better: bool,
                      lower_bound: float | None = None,
                      tiebreaks: tuple[Criterion, ...] = (), metric: str = "the metric"
                      ) -> tuple[dict[str, int], dict[str, str]]:
    """Ranks with ties broken by further metrics, and for each entry what placed it.

    Parameters
    ----------
    entries : dict of str to DataFrame
        Per entry, ``value`` and ``se`` on the table's metric, indexed by
        replicate key (failures already entered at the worst value).
    lower_is_better : bool
        Direction of the table's metric.
    lower_bound : float or None
        The table's metric's floor; an entry within noise of it cannot be
        beaten on that metric.
    tiebreaks : tuple of Criterion
        Further metrics, in order. A pair the table's metric leaves tied is
        compared on the first of them that separates it (the same paired
        test and floor rule); a pair where either has no valid value of a
        metric skips that metric, so missing values cost nothing, and a pair
        that both fail on the table's metric stays tied, last.
    metric : str
        The table's metric's name, for the notes.

    Returns
    -------
    ranks : dict of str to int
        1 + the number of entries that beat each one on the chain.
    notes : dict of str to str
        Per entry, the tie-breaking metric that placed it behind entries it
        tied on the table's metric, and every tie with an entry of its own
        rank with the reason each metric gave.
    """
    chain = [Criterion(metric, entries, lower_is_better, lower_bound), *tiebreaks]
    floors = [{label: at_floor(e, c.lower_bound, c.lower_is_better)
               for label, e in c.entries.items()} for c in chain]
    labels = list(entries)
    winner, decided_by = {}, {}
    for n, a in enumerate(labels):
        for b in labels[n + 1:]:
            winner[(a, b)], decided_by[(a, b)] = _pair_verdict(a, b, chain, floors)

    def verdict(x: str, y: str) -> tuple[str | None, int]:
        return (winner[(x, y)], decided_by[(x, y)]) if (x, y) in winner \
            else (winner[(y, x)], decided_by[(y, x)])

    ranks = {i: 1 + sum(verdict(i, j)[0] == j for j in labels if j != i) for i in labels}
    notes = {}
    for i in labels:
        parts = []
        behind: dict[int, list[str]] = {}
        for j in labels:
            if j != i and verdict(i, j)[0] == j and verdict(i, j)[1] > 0:
                behind.setdefault(verdict(i, j)[1], []).append(j)
        for k, names in sorted(behind.items()):
            tied_on = ", ".join(c.metric for c in chain[:k])
            parts.append(f"behind {_names(sorted(names))} on {chain[k].metric} "
                         f"(tied on {tied_on})")
        # "clearly better" is not transitive: an entry can beat one that shares its rank
        level = sorted(j for j in labels if j != i and ranks[j] == ranks[i]
                       and verdict(i, j) == (j, 0))
        if level:
            parts.append(f"behind {_names(level)} on {metric}, yet of the same rank: as many "
                         "entries beat each")
        groups: dict[str, list[str]] = {}
        for j in labels:
            if j != i and ranks[j] == ranks[i] and verdict(i, j)[0] is None:
                why = f"{metric}: both fail, so no further metric orders them" \
                    if verdict(i, j)[1] == 0 else \
                    "; ".join(_tie_reason(i, j, c, floors[k]) for k, c in enumerate(chain))
                groups.setdefault(why, []).append(j)
        parts += [f"ties {_names(sorted(names))} ({why})" for why, names in groups.items()]
        if parts:
            notes[i] = "; ".join(parts)
    return ranks, notes


# --- tables ---------------------------------------------------------------------------------
def build_leaderboard(frame: pd.DataFrame, metric: str | None = None) -> pd.DataFrame:
    """One row per (task, metric, group, solver configuration), ranked.

    Columns: task, metric, group, t, rank, solver, median, ci_low, ci_high,
    n_runs, n_inf, n_failed, failed (n_failed + n_inf), time_run_median,
    status, note, lower_is_better, entries (how many solver configurations
    the table ranks, skips not counted: rank 1 of 1 is not a win).
    """
    if frame.empty:
        return pd.DataFrame()
    frame = frame.assign(label=aggregate.solver_labels(frame), group=aggregate.group_labels(frame),
                         replicate=aggregate.replicate_keys(frame))
    rows: list[dict[str, Any]] = []
    for task, task_part in frame.groupby("task", sort=True):
        task_part = aggregate.final_time_rows(task_part)
        metrics = ranking_metrics(task, task_part, metric)
        for rank_metric in metrics or [None]:
            # ties on this metric are broken by the task's other ranking metrics, in order
            others = tuple(m for m in metrics if m != rank_metric)
            for group, part in task_part.groupby("group", sort=False):
                rows.extend(_table(task, group, part, rank_metric,
                                   primary=rank_metric == (metrics[0] if metrics else None),
                                   tiebreaks=others))
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    order = {m: i for task in board["task"].unique()
             for i, m in enumerate(ranking_metrics(task, frame, metric))}
    better_first = board["median"] * np.where(board["lower_is_better"], 1.0, -1.0)
    board = board.assign(_m=board["metric"].map(order).fillna(99),
                         _g=board["group"].map(lambda g: tuple(aggregate.natural_key(g))),
                         _o=better_first).sort_values(
        ["task", "_m", "_g", "rank", "_o"], na_position="last", kind="stable")
    return board.drop(columns=["_m", "_g", "_o"]).reset_index(drop=True)


def _applies(part: pd.DataFrame, metric: str) -> bool:
    """Whether ``metric`` judges this entry: a value, or a missing value that should exist
    (anything but a 'not applicable' note)."""
    values = pd.to_numeric(part[metric], errors="coerce") if metric in part else None
    if values is not None and values.notna().any():
        return True
    return bool((aggregate.invalid_reasons(part, metric) != "").any())


def _cap_floors(entries: dict[str, pd.DataFrame], oracles: set[str]) -> None:
    """Cap each entry's sample-size floors at the oracle's, in place; none without an oracle.

    An entry with more draws than the oracle has a lower floor than it, and
    keeps it (the oracle is not beaten for having fewer draws); one with fewer
    is held to the oracle's floor (it gets no credit for its small size).
    """
    floors = [float(np.median(entries[o]["floor"])) for o in oracles if o in entries
              and np.isfinite(entries[o]["floor"].to_numpy(float)).all()]
    for label, entry in entries.items():
        entries[label] = entry.assign(floor=np.minimum(entry["floor"].to_numpy(float),
                                                       min(floors)) if floors else np.nan)


def _floors(runs: pd.DataFrame, metric: str | None, index: pd.Index) -> np.ndarray:
    """Each run's sample-size floor of ``metric`` (``<metric>_floor``), NaN where none."""
    column = f"{metric}_floor"
    if metric is None or column not in runs:
        return np.full(len(index), np.nan)
    return pd.to_numeric(runs[column], errors="coerce").reindex(index).to_numpy(float)


def _valid_entry(runs: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """An entry's valid values of ``metric`` (∞ included) by replicate, for breaking ties.

    Failed runs, invalid values and NaN are left out rather than entered at
    the worst value: a failure already ranks on the table's own metric, and a
    tie-break must not punish an entry for what that metric does not judge.
    """
    ok = runs[runs["status"] == "ok"]
    if metric not in ok or ok.empty:
        return None
    values = pd.to_numeric(ok[metric], errors="coerce")
    keep = values.notna() & (aggregate.invalid_reasons(ok, metric) == "")
    if not keep.any():
        return None
    se = pd.to_numeric(ok[f"{metric}_se"], errors="coerce") if f"{metric}_se" in ok \
        else pd.Series(np.nan, index=ok.index)
    entry = pd.DataFrame({"value": values[keep].to_numpy(float),
                          "se": se[keep].to_numpy(float),
                          "floor": _floors(ok, metric, ok.index[keep])},
                         index=pd.Index(ok.loc[keep, "replicate"].to_numpy()))
    return entry[~entry.index.duplicated(keep="first")]


def _table(task: str, group: str, part: pd.DataFrame, metric: str | None,
           primary: bool, tiebreaks: tuple[str, ...] = ()) -> list[dict]:
    lower = aggregate.lower_is_better(metric) if metric else True
    bound = aggregate.metric_lower_bound(metric) if metric else None
    worst = aggregate.worst_value(metric) if metric else np.inf
    entries, records = {}, []
    criteria = [Criterion(m, {}, aggregate.lower_is_better(m), aggregate.metric_lower_bound(m))
                for m in tiebreaks if m in part]
    for label, runs in part.groupby("label", sort=True):
        runs = runs[runs["status"] != "skipped"] if (runs["status"] != "skipped").any() else runs
        ok = runs[runs["status"] == "ok"]
        failed_runs = runs[runs["status"].isin(aggregate.FAILED_STATUSES)]
        judged = metric is not None and metric in runs and _applies(runs, metric)
        if not judged and not (primary and (len(failed_runs) or ok.empty)):
            continue  # the metric does not apply to this solver: not in this table
        values = pd.to_numeric(ok[metric], errors="coerce") if judged else pd.Series(dtype=float)
        se = pd.to_numeric(ok.get(f"{metric}_se"), errors="coerce") \
            if judged and f"{metric}_se" in ok else pd.Series(np.nan, index=ok.index)
        reasons = aggregate.invalid_reasons(ok, metric) if judged \
            else pd.Series("", index=ok.index, dtype=object)
        bad = reasons != ""
        shown = values[~bad & values.notna()]
        n_inf = int(np.isinf(shown).sum())
        n_nan = int((values.isna() & ~bad).sum())
        # failed runs and invalid values are replicates at the worst value: they rank, last
        scored = pd.concat([values.where(~bad, worst).dropna() if judged
                            else pd.Series(dtype=float),
                            pd.Series(worst, index=failed_runs.index, dtype=float)])
        scored_se = pd.concat([se.reindex(values.index).where(~bad, 0.0),
                               pd.Series(0.0, index=failed_runs.index)]).reindex(scored.index)
        replicate = pd.concat([ok["replicate"], failed_runs["replicate"]]).reindex(scored.index)
        entry = pd.DataFrame({"value": scored.to_numpy(float), "se": scored_se.to_numpy(float),
                              "floor": _floors(runs, metric, scored.index)},
                             index=pd.Index(replicate.to_numpy()))
        entry = entry[~entry.index.duplicated(keep="first")]
        low, high = aggregate.bootstrap_median_interval(
            shown.to_numpy(float), se.reindex(shown.index).to_numpy(float), SHOW_LEVEL,
            lower_bound=bound if lower else None) if len(shown) else (np.nan, np.nan)
        n_invalid = int(bad.sum())
        note = _note(len(shown), n_inf, n_nan, runs, metric, reasons[bad])
        record = {
            "task": task, "metric": metric or "", "group": group,
            "task_config": ";".join(sorted(runs["task_config"].astype(str).unique())),
            "t": float(runs["t"].iloc[0]), "solver": label, "lower_is_better": lower,
            "median": float(np.median(shown)) if len(shown) else np.nan,
            "ci_low": low, "ci_high": high, "n_runs": int(len(shown)), "n_inf": n_inf,
            "n_nan": n_nan, "n_invalid": n_invalid, "n_failed": len(failed_runs),
            "failed": len(failed_runs) + n_inf + n_invalid,
            "time_run_median": float(pd.to_numeric(ok["time_run"], errors="coerce").median())
            if len(ok) else np.nan,
            "diagnostics": aggregate.diagnostics_text(ok["info"]) if "info" in ok else "",
            "status": "ok" if len(shown) else ("invalid" if n_invalid else
                                               ",".join(sorted(runs["status"].unique()))),
            "note": note}
        records.append(record)
        if len(entry):
            entries[label] = entry
            for criterion in criteria:
                valid = _valid_entry(runs, criterion.metric)
                if valid is not None:
                    criterion.entries[label] = valid
    oracles = set(part.loc[part["solver"] == ORACLE, "label"])
    _cap_floors(entries, oracles)
    for criterion in criteria:
        _cap_floors(criterion.entries, oracles)
    ranks, ties = rank_with_reasons(entries, lower, bound, tuple(criteria), metric or "") \
        if entries else ({}, {})
    for record in records:
        record["rank"] = ranks.get(record["solver"], np.nan)
        record["entries"] = len(ranks)
        if record["solver"] in ties:
            record["note"] = "; ".join(filter(None, [record["note"], ties[record["solver"]]]))
        if len(ranks) == 1 and record["solver"] in ranks:
            # rank 1 of 1 compared nothing: it is not a win (matrix, summary and report say so)
            record["note"] = "; ".join(filter(None, [record["note"], SOLE_ENTRY]))
    return records


def _note(n_valid: int, n_inf: int, n_nan: int, runs: pd.DataFrame, metric: str | None,
          invalid: pd.Series | None = None) -> str:
    notes = []
    if invalid is not None and len(invalid):
        notes.append(f"{len(invalid)} invalid, ranked as failures: "
                     f"{str(invalid.iloc[0])[:120]}")
    if n_valid == 1:
        notes.append("1 run: interval = Monte Carlo error only")
    if n_inf:
        notes.append(f"∞ in {n_inf} run{'s' if n_inf > 1 else ''}")
    if n_nan and metric:
        reasons = {str(store.note_for(n, metric)) for n in runs["metric_notes"].dropna()} \
            if "metric_notes" in runs else set()
        reasons.discard("")
        notes.append(f"{n_nan} not computed" + (f" ({sorted(reasons)[0]})" if reasons else ""))
    skipped = runs[runs["status"] == "skipped"]
    if len(skipped) and skipped["error"].notna().any():
        notes.append(f"skipped: {str(skipped['error'].dropna().iloc[0])[:120]}")
    failed = runs[runs["status"].isin(aggregate.FAILED_STATUSES)]
    if len(failed):
        first = str(failed["error"].dropna().iloc[0]) if failed["error"].notna().any() else ""
        notes.append(f"{len(failed)} failed" + (f": {first[:80]}" if first else ""))
    return "; ".join(notes)


def wins(rows: pd.DataFrame) -> pd.Series:
    """Whether each entry won its table: rank 1 among at least two entries."""
    contested = rows["entries"] > 1 if "entries" in rows else True
    return (rows["rank"] == 1) & contested


def summary(board: pd.DataFrame) -> pd.DataFrame:
    """Per (task, metric, solver): tables entered, wins (rank 1 against someone) and mean rank."""
    ranked = board.dropna(subset=["rank"])
    if ranked.empty:
        return pd.DataFrame(columns=["task", "metric", "solver", "tables", "wins", "mean_rank"])
    out = ranked.assign(_win=wins(ranked)).groupby(["task", "metric", "solver"], sort=True).agg(
        tables=("rank", "size"), wins=("_win", "sum"), mean_rank=("rank", "mean")).reset_index()
    return out.sort_values(["task", "metric", "mean_rank", "solver"]).reset_index(drop=True)


# --- output ----------------------------------------------------------------------------------
def cell(row: pd.Series) -> str:
    """``0.0123 [0.011, 0.014]`` with ∞ and 'failed' spelled out."""
    if row["status"] == "skipped":
        return "skipped"  # the solver does not apply here (the reason is in the note)
    if row["status"] != "ok":
        return f"failed ({row['status']})"
    text = aggregate.format_number(row["median"])
    if np.isfinite(row["median"]) and np.isfinite(row["ci_low"]) \
            and (row["ci_low"], row["ci_high"]) != (row["median"], row["median"]):
        text += f" [{aggregate.format_number(row['ci_low'])}, " \
                f"{aggregate.format_number(row['ci_high'])}]"
    return text


def _unranked(status: str) -> str:
    """Matrix cell of an entry without a rank: a skip is not a failure."""
    return "skipped" if status == "skipped" else "failed"


def _matrix_cell(row: pd.Series) -> str:
    """``#2 0.013``; an entry whose every run failed reads ``failed (#5)``: ranked, last."""
    if pd.isna(row["rank"]):
        return _unranked(row["status"])
    rank = int(row["rank"])
    if row["status"] != "ok":
        return f"failed (#{rank})"
    text = f"#{rank} {aggregate.format_number(row['median'])}"
    return text + " ⚠" if row.get("failed", 0) else text


def matrix(part: pd.DataFrame) -> pd.DataFrame:
    """Solvers × groups: ``#rank median`` per cell, then wins and mean rank."""
    groups = sorted(part["group"].unique(), key=aggregate.natural_key)
    table = {}
    for label, rows in part.groupby("solver", sort=False):
        by_group = rows.set_index("group")
        cells = {g: _matrix_cell(by_group.loc[g]) if g in by_group.index else ""
                 for g in groups}
        ranks = rows["rank"].dropna()
        entered = int((rows["status"] != "skipped").sum())
        cells["wins"] = f"{int(wins(rows).sum())}/{entered}" if entered else "—"
        cells["mean rank"] = aggregate.format_number(ranks.mean()) if len(ranks) else "—"
        cells["failures"] = str(int(rows["failed"].fillna(0).sum())) if "failed" in rows else "0"
        table[label] = cells
    out = pd.DataFrame.from_dict(table, orient="index")
    out = out.assign(_k=pd.to_numeric(out["mean rank"].replace("—", np.nan), errors="coerce"))
    out = out.sort_values(["_k"], na_position="last").drop(columns="_k")
    return out.rename_axis("solver").reset_index()


RULE = ("Rank = 1 + the number of entries that are clearly better: over the replicates "
        "(seeds, data splits) two entries share, the 99 % interval of the median paired "
        "difference, with each run's Monte Carlo error, lies entirely on one side. Entries "
        "within noise of the metric's lower bound (0 for a divergence, where the exact law "
        "sits) cannot be beaten; on a metric biased up by sample size (a covariance "
        "error, a particle set's energy) the floor is the exact law's score with as many "
        "draws, capped at the oracle's. ∞ ranks last and counts as a failure. Two entries the "
        "table's metric leaves tied are compared, by the same test and floor rule, on the "
        "task's other ranking metrics in order (the energy table on Monte Carlo SymKL, the "
        "SymKL table on energy): the first that separates them decides, and an entry without "
        "valid values of a metric (a particle set has no density) is never compared on it, "
        "so it neither gains nor loses by it; entries that both fail on the table's metric "
        "stay tied, last. The note names the metric that placed an entry "
        "behind one it tied, and gives for every remaining tie what each metric said: "
        "within noise of the floor, a paired 99 % interval that includes 0, or no valid "
        "value to pair. Cells give the median "
        "over replicates [90 % interval, from the replicates' spread and their Monte Carlo "
        "errors, cut at the metric's lower bound: the interval is of the true value, which "
        "cannot be below it, while an unbiased estimate — the median shown — can be: the "
        "energy distance of i.i.d. draws is an unbiased U-statistic, so a law at the "
        "reference reads 0 ± noise and single values fall below 0]; '1 run' "
        "entries carry their Monte Carlo error only. An entry ties the floor only if its "
        "whole interval is within noise of it. Failed runs, ∞ and invalid values (a density "
        "that does not integrate to 1, a value below the metric's bound beyond noise, a "
        "metric not computed where it applies) are replicates at the worst value: they rank, "
        "last, and count in the failures column; ⚠ marks a cell with some. An entry alone in "
        "its table is rank 1 of 1: it was compared with nothing, and 'wins' does not count it. "
        "Ranking time: the "
        "latest evaluation time every solver of the task shares.")


def to_markdown(board: pd.DataFrame) -> str:
    """Leaderboard as Markdown: per task and metric, a summary matrix, then one table per group."""
    lines = ["# gfbench leaderboard\n", RULE + "\n"]
    for (task, metric), part in board.groupby(["task", "metric"], sort=False):
        direction = "lower" if aggregate.lower_is_better(metric) else "higher"
        title = aggregate.metric_title(metric) if metric else "no metric"
        t = aggregate.format_number(part["t"].iloc[0])
        lines.append(f"## {task} — {title} ({direction} is better), t = {t}\n")
        lines.append(markdown_table(matrix(part)))
        for group, rows in part.groupby("group", sort=False):
            lines.append(f"### {task}, {group}\n")
            lines.append(markdown_table(detail_table(rows)))
    return "\n".join(lines)


def detail_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One group's entries: rank, solver, score, runs, failures, time, the solver's own
    diagnostics (where any solver reports them), notes."""
    table = pd.DataFrame({
        "rank": rows["rank"].map(lambda r: "—" if pd.isna(r) else str(int(r))),
        "solver": rows["solver"],
        "median [90% interval]": [cell(r) for _, r in rows.iterrows()],
        "runs": rows["n_runs"], "failed": rows["failed"],
        "time [s]": rows["time_run_median"].map(aggregate.format_number),
        # the solver's own view of its success, beside the score it got
        "solver diagnostics": rows["diagnostics"].fillna("") if "diagnostics" in rows else "",
        "note": rows["note"].fillna(""),
    })
    if not (table["solver diagnostics"].astype(str) != "").any():
        table = table.drop(columns="solver diagnostics")
    return table


def write_leaderboard(dirs: list[Path], out: Path, metric: str | None = None,
                      frame: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write ``leaderboard.md`` and ``leaderboard.csv`` into ``out``."""
    board = build_leaderboard(store.load(dirs) if frame is None else frame, metric)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md_path, csv_path = out / "leaderboard.md", out / "leaderboard.csv"
    store.atomic_write_text(csv_path, board.to_csv(index=False))
    store.atomic_write_text(md_path, to_markdown(board) if not board.empty
                            else "# gfbench leaderboard\n\nNo runs.\n")
    return {"markdown": md_path, "csv": csv_path}
