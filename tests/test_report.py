"""Report, leaderboard and the compare regression gate."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from analysis import compare, leaderboard
from execution import store


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    from cli.main import main

    out = tmp_path_factory.mktemp("tiny")
    assert main([*("run " + " ".join(TINY)).split(), "--out", str(out)]) == 0
    return out


def test_report_has_tables_and_figures_for_every_solver(gfbench, tiny_results, tmp_path):
    code, stdout, _ = gfbench("report", tiny_results, "--out", tmp_path / "rep")
    assert code == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "## Task `ou`" in md and "| exact |" in md and "em" in md
    assert "ou_symkl_kde_dim.png" in md and (tmp_path / "rep" / "figures" / "ou_symkl_kde_dim.png").is_file()
    assert html.count("data:image/png;base64,") >= 2  # self-contained
    # the oracle's MC SymKL is exactly 0 and shows up as such in the table
    row = next(line for line in md.splitlines() if line.startswith("| exact | dim=1 | 0.2"))
    assert "| 0 |" in row


def test_leaderboard_ranks_every_group_on_the_task_metrics(tiny_results):
    board = leaderboard.build_leaderboard(store.load(tiny_results))
    assert set(board["group"]) == {"dim=1", "dim=2"}
    assert set(board["metric"]) == {"energy", "symkl"} and board["rank"].min() == 1
    # Monte Carlo SymKL ranks the solvers with a density only
    assert set(board.loc[board["metric"] == "symkl", "solver"]) == {"exact"}
    forced = leaderboard.build_leaderboard(store.load(tiny_results), metric="symkl_kde")
    assert set(forced.dropna(subset=["rank"])["solver"]) == {"em"}  # exact has a density, no KDE


def test_compare_same_results_has_no_regression(tiny_results, capsys):
    assert compare.compare_dirs(tiny_results, tiny_results) == 0
    assert "same" in capsys.readouterr().out


def _frame(values, status="ok", version="1", metric_version="1"):
    return pd.DataFrame({
        "task": "ou", "task_config": "dim=1", "solver": "em", "solver_config": "n=1", "t": 1.0,
        "seed": range(len(values)), "status": status, "error": "", "task_version": "1",
        "solver_version": version, "symkl": values, "time_run": 1.0, "machine_id": "m",
        "metric_versions": json.dumps({"symkl": metric_version})})


@pytest.mark.parametrize("new, kwargs, verdict", [
    ([0.10, 0.11, 0.09], {}, "same"),
    ([0.30, 0.33, 0.27], {}, "worse"),
    ([0.01, 0.011, 0.009], {}, "better"),
    ([0.30, 0.02, 0.10], {}, "not significant"),
    ([0.10, 0.11, 0.09], {"version": "2"}, "not comparable"),
    ([0.10, 0.11, 0.09], {"metric_version": "2"}, "not comparable"),
    ([np.nan] * 3, {"status": "error"}, "new failure"),
])
def test_compare_verdicts(new, kwargs, verdict):
    table = compare.compare_frames(_frame([0.10, 0.11, 0.09]), _frame(new, **kwargs))
    assert verdict in set(table["verdict"])


def test_compare_fixed_and_missing():
    table = compare.compare_frames(_frame([np.nan] * 3, status="error"), _frame([0.1] * 3))
    assert "fixed" in set(table["verdict"])
    two = pd.concat([_frame([0.1] * 3), _frame([0.1] * 3).assign(task_config="dim=2")])
    table = compare.compare_frames(two, _frame([0.1] * 3))
    assert "missing" in set(table["verdict"]) and "same" in set(table["verdict"])
    with pytest.raises(compare.NothingCompared):
        compare.compare_frames(_frame([0.1] * 3), _frame([]).iloc[:0])


def test_compare_uses_wilcoxon_with_many_seeds():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.09, 0.11, 10)
    assert compare.paired_verdict(base, base * 2, True, 0.25, 1e-3) == "worse"
    noisy = base * np.where(np.arange(10) % 2, 2.0, 0.4)
    assert compare.paired_verdict(base, noisy, True, 0.25, 1e-3) == "not significant"


def test_compare_cli_exits_1_on_regression(gfbench, tiny_results, tmp_path):
    import shutil

    worse = tmp_path / "worse"
    shutil.copytree(tiny_results, worse)
    for path in store.runs_dir(worse).glob("*.json"):
        payload = json.loads(path.read_text())
        if payload["spec"]["solver"] != "em":
            continue
        for row in payload["rows"]:
            row["symkl_kde"] = row["symkl_kde"] * 10 + 1.0
        store.write_run(worse, payload["spec"], payload["rows"])
    code, stdout, _ = gfbench("compare", tiny_results, worse, "--out", tmp_path / "cmp.csv")
    assert code == 1 and "REGRESSION worse" in stdout
    assert (tmp_path / "cmp.csv").is_file()


def test_ranking_time_is_the_latest_time_every_solver_has():
    from analysis.aggregate import final_time_rows

    frame = pd.DataFrame({"task": ["ou"] * 5 + ["f"],
                          "solver": ["em", "em", "em", "icnn", "icnn", "bbf"],
                          "t": [0.5, 0.9, 1.0, 0.5, 0.9, 5.0]})
    ranked = final_time_rows(frame)
    assert sorted(ranked["solver"]) == ["bbf", "em", "icnn"]
    assert set(ranked.loc[ranked["task"] == "ou", "t"]) == {0.9}


def test_a_configuration_that_failed_before_the_ranking_time_is_kept_as_its_failure():
    from analysis.aggregate import final_time_rows

    # "short" was asked for t = 0.5 only and failed there; "crash" has no row at 1.0 either
    frame = pd.DataFrame({
        "task": "ou", "run_id": ["a", "a", "b", "c", "d", "d"],
        "solver": ["em", "em", "em", "em", "icnn", "icnn"],
        "solver_config": ["N=10", "N=10", "short", "ok-short", "", ""],
        "status": ["ok", "ok", "error", "ok", "ok", "ok"],
        "t": [0.5, 1.0, 0.5, 0.5, 0.5, 1.0]})
    ranked = final_time_rows(frame)
    assert sorted(ranked["run_id"]) == ["a", "b", "d"]  # an ok run at 0.5 only stays out
    assert ranked.set_index("run_id").loc["b", "status"] == "error"


def test_a_failed_run_is_kept_once_at_its_latest_row_and_only_if_its_configuration_never_ran_ok():
    from analysis.aggregate import final_time_rows

    # "crash" failed at 0.5 after an ok 0.1, rows out of order; "mixed" ran ok on one
    # seed and failed on another, both to 0.5 only: not judged at 1.0, not a failure
    frame = pd.DataFrame({
        "task": "ou", "run_id": ["a", "c", "c", "m1", "m2"],
        "solver": ["em", "icnn", "icnn", "scvm", "scvm"],
        "solver_config": ["", "crash", "crash", "mixed", "mixed"],
        "status": ["ok", "diverged", "diverged", "ok", "error"],
        "t": [1.0, 0.5, 0.1, 0.5, 0.5]})
    ranked = final_time_rows(frame)
    assert sorted(ranked["run_id"]) == ["a", "c"]
    assert ranked.set_index("run_id").loc["c", "t"] == 0.5


def test_blr_table_gives_median_and_range_per_protocol(tmp_path):
    from analysis.document import Document as _Document
    from analysis.report import _blr_section

    accuracy = [0.70, 0.74, 0.80, 0.66]
    frame = pd.DataFrame({
        "task": "bayesian_logreg", "solver": "svgd", "label": "svgd", "t": 1.0,
        "status": "ok", "task.dataset": "german",
        "task.protocol": ["study", "study", "study", np.nan],  # NaN: before the parameter
        "test_accuracy": accuracy, "test_loglik": [-0.6, -0.5, -0.55, -0.7]})
    doc = _Document(tmp_path)
    _blr_section(doc, frame, ["test_accuracy", "test_loglik"])
    md = "".join(doc.md)
    assert "Protocol `study`" in md and "Protocol `gfbench`" in md
    # one table per metric, ours beside the published column of the same metric
    assert "| german | 0.74 [0.7, 0.8] | 0.67 | 0.65 |" in md
    assert "| german | -0.55 [-0.6, -0.5] | -0.6 | -0.6 |" in md
    # the single gfbench run shows its value alone
    assert any(line.startswith("| german | 0.66 |") for line in md.splitlines())
    # a non-default state gets its own table; NaN (before the parameter) is centred
    frame["task.state"] = [np.nan, "centred", "non_centred", np.nan]
    doc = _Document(tmp_path)
    _blr_section(doc, frame, ["test_accuracy", "test_loglik"])
    md = "".join(doc.md)
    assert "Protocol `study, non_centred state`" in md and "Protocol `study`" in md
    assert any(line.startswith("| german | 0.8 |") for line in md.splitlines())
    assert "0.72 [0.7, 0.74]" in md


def test_leaderboard_lists_the_better_median_first_within_a_shared_rank():
    # two solvers whose intervals overlap (same rank); higher log-likelihood is better
    frame = pd.DataFrame({
        "task": "bayesian_logreg", "task_config": "dataset=x", "t": 1.0, "status": "ok",
        "solver": ["a"] * 3 + ["b"] * 3, "solver_config": "", "seed": [0, 1, 2] * 2,
        "test_loglik": [-0.13, -0.105, -0.083, -0.094, -0.093, -0.090],
        "test_loglik_se": 0.001, "time_run": 1.0, "error": ""})
    board = leaderboard.build_leaderboard(frame, metric="test_loglik")
    assert board["rank"].tolist() == [1, 1]
    assert board["solver"].tolist()[0].startswith("b")  # median -0.093 beats -0.105
    lower = leaderboard.build_leaderboard(frame.assign(test_loglik=-frame["test_loglik"]),
                                          metric="test_loglik")
    assert lower["solver"].tolist()[0].startswith("a")


def test_blr_paired_differences_remove_the_split_to_split_spread(tmp_path):
    from analysis.document import Document as _Document
    from analysis.report import _blr_section, _paired_differences

    # the splits differ by 0.1 while icnn sits 0.01 above svgd on each of them
    svgd = [0.60, 0.70, 0.80]
    frame = pd.DataFrame({
        "task": "bayesian_logreg", "t": 1.0, "status": "ok", "task.dataset": "german",
        "task.protocol": "study", "task.split": [0, 1, 2] * 2 + [2], "seed": 0,
        "label": ["svgd"] * 3 + ["icnn"] * 3 + ["em"],
        "test_accuracy": svgd + [a + 0.01 for a in svgd] + [0.5],
        "test_loglik": -0.5})
    frame["solver"] = frame["label"]
    paired = _paired_differences(frame, "task.dataset", "test_accuracy")
    assert paired.loc["german", "icnn − svgd test_accuracy (same split)"] == "0.01 [0.01, 0.01]"
    assert paired.loc["german", "em − svgd test_accuracy (same split)"] == "-0.3"
    assert _paired_differences(frame[frame["label"] != "svgd"], "task.dataset",
                               "test_accuracy").empty
    doc = _Document(tmp_path)
    _blr_section(doc, frame, ["test_accuracy", "test_loglik"])
    assert "icnn − svgd (same split)" in "".join(doc.md)


def test_a_skipped_solver_reads_skipped_with_its_reason_not_failed():
    frame = pd.DataFrame({
        "task": "ou", "task_config": "dim=16", "t": 0.9, "solver_config": "",
        "solver": ["exact"] * 2 + ["dual_jko", "em"], "seed": [0, 1, 0, 0],
        "status": ["ok", "ok", "skipped", "error"],
        "error": ["", "", "the basis has 10^5 monomials at D = 16", "boom"],
        "energy": [1e-4, 2e-4, np.nan, np.nan], "energy_se": 1e-4, "time_run": 1.0})
    board = leaderboard.build_leaderboard(frame, metric="energy")
    cells = leaderboard.matrix(board).set_index("solver")
    assert cells.loc["dual_jko", "all"] == "skipped" and cells.loc["dual_jko", "wins"] == "—"
    assert cells.loc["em", "all"] == "failed (#2)" and cells.loc["em", "wins"] == "0/1"
    detail = leaderboard.detail_table(board).set_index("solver")
    assert detail.loc["dual_jko", "median [90% interval]"] == "skipped"
    assert "10^5 monomials" in detail.loc["dual_jko", "note"]
    assert detail.loc["dual_jko", "failed"] == 0
    assert detail.loc["em", "median [90% interval]"].startswith("failed")


def test_the_studys_own_mixture_targets_get_its_published_median_beside_them():
    from analysis import report

    published = pd.DataFrame({"task": ["stationary_gmm"] * 2, "solver": ["icnn_jko"] * 2,
                              "n_particles": [np.nan] * 2, "dim": [10.0, 12.0], "t": [4.0] * 2,
                              "metric": ["symkl"] * 2, "value": [0.297, 0.489]})
    for task in ("stationary_gmm_study", "stationary_gmm"):
        row = pd.Series({"task": task, "t": 4.0})
        frame_row = pd.Series({"solver": "icnn_jko", "task.dim": 10.0})
        assert report._published_for(row, published, frame_row) == "0.297 (symkl)"
    other = pd.Series({"task": "ou", "t": 4.0})
    assert report._published_for(other, published, pd.Series({"solver": "icnn_jko",
                                                              "task.dim": 10.0})) == ""


# --- the report at a glance: tables that fit 1400 px, figures that drop nothing ------------
def _board(task, metric, groups, solvers, failed=()):
    """A ranked board (what ``build_leaderboard`` returns) without running anything:
    ``failed`` names (group, solver) entries whose every run failed (ranked last)."""
    rows = []
    for group in groups:
        for rank, solver in enumerate(solvers, start=1):
            bad = (group, solver) in failed
            rows.append({"task": task, "metric": metric, "group": group, "solver": solver,
                         "rank": len(solvers) if bad else rank, "median": np.nan if bad
                         else 0.5 + 0.01 * rank, "status": "error" if bad else "ok",
                         "failed": int(bad), "time_run_median": 2.0})
    return pd.DataFrame(rows)


def _html_tables(html_text):
    """Each HTML table's header cells, in order."""
    import re

    return [re.findall(r"<th>(.*?)</th>", head)
            for head in re.findall(r"<thead>(.*?)</thead>", html_text)]


def test_blr_summary_is_a_table_of_data_sets_by_solvers_per_protocol_and_state(tmp_path):
    from analysis import report

    datasets = ["banana", "diabetis", "german", "image", "ringnorm", "twonorm", "waveform"]
    groups = [f"dataset={d}, protocol={p}, state={s}" for d in datasets
              for p in ("gfbench", "study") for s in ("centred", "non_centred")]
    board = _board("bayesian_logreg", "test_accuracy", groups, ["svgd", "em", "icnn_jko"],
                   failed={("dataset=german, protocol=study, state=centred", "icnn_jko")})
    doc = report.Document(tmp_path)
    report._summary(doc, board)
    md, html_text = "\n".join(doc.md), "\n".join(doc.html)
    # one table per (protocol, state), data sets down and solvers across
    tables = _html_tables(html_text)
    assert tables == [["dataset", "svgd", "em", "icnn_jko"]] * 4
    for facet in ("protocol=gfbench, state=centred", "protocol=gfbench, state=non_centred",
                  "protocol=study, state=centred", "protocol=study, state=non_centred"):
        assert f"**{facet}**" in md and f'<p class="caption">{facet}</p>' in html_text
    assert "| german | #1 0.51 | #2 0.52 | failed (#3) |" in md
    assert any(line.startswith("| wins | 7/7 |") for line in md.splitlines())
    # the colours survive the turn: rank 1 green, the failed entry red
    assert f'style="background:{report.RANK_COLOURS[1]}">#1 0.51' in html_text
    assert f'style="background:{report.FAILED_COLOUR}">failed (#3)' in html_text


@pytest.mark.parametrize("n_groups, n_solvers", [(12, 14), (30, 3), (8, 12), (17, 9)])
def test_no_summary_table_has_more_group_columns_than_fit(tmp_path, n_groups, n_solvers):
    from analysis import report

    groups = [f"dim={d}" for d in range(1, n_groups + 1)]
    solvers = [f"s{i}" for i in range(n_solvers)]
    doc = report.Document(tmp_path)
    report._summary(doc, _board("ou", "energy", groups, solvers))
    tables = _html_tables("\n".join(doc.html))
    totals = set(report.TOTAL_COLUMNS)
    shown = []
    for head in tables:
        values = [c for c in head[1:] if c not in totals]
        assert len(values) <= report.MAX_GROUP_COLUMNS, head
        shown += values
    turned = tables[0][0] == "dim"
    # every group (or, turned, every solver) exactly once; the totals once, first
    assert sorted(shown) == sorted(solvers if turned else groups)
    assert turned == (n_solvers < n_groups and n_solvers <= report.MAX_GROUP_COLUMNS)
    if not turned:
        assert [bool(totals & set(head)) for head in tables] == [True] + [False] * (
            len(tables) - 1)


def test_figures_on_log_axes_draw_values_at_or_below_0_and_count_what_they_cannot(tmp_path):
    from analysis import figures
    from analysis.document import Document as _Document

    # an unbiased energy distance near the oracle: 0 ± noise, half the medians below 0
    rng = np.random.default_rng(0)
    rows = [{"task": "ou", "task.dim": dim, "t": 1.0, "seed": seed, "status": "ok",
             "solver": solver, "label": solver, "solver_config": "",
             "energy": (0.05 * dim if solver == "bad" else 0.0) + rng.normal(0, 1e-3),
             "energy_se": 1e-3, "time_run": 1.0 + dim, "time_setup": 0.1}
            for dim in (1, 2, 4) for seed in range(3) for solver in ("exact", "em", "bad")]
    frame = pd.DataFrame(rows)
    frame.loc[(frame["solver"] == "bad") & (frame["task.dim"] == 4), "energy"] = np.inf
    frame["task_config"] = "dim=" + frame["task.dim"].astype(str)
    plt, sns = figures._plt()
    palette = figures._palette(frame["label"], sns)
    doc = _Document(tmp_path)
    figures._cost_figure(doc, frame, palette, "energy", "cost")
    figures._figure_vs(doc, frame, palette, "task.dim", "t", "energy", True, "dim", "vs dim.")
    cost, versus = [line for line in doc.md if line.startswith("![")]
    n_low = int((frame.groupby(["solver", "task.dim"])["energy"].median() <= 0).sum())
    assert n_low > 0
    assert "log axis" in cost and "Symlog axis: linear within ±0.001" in cost
    assert f"so the {n_low} medians ≤ 0 are drawn too" in cost
    assert "Not shown: entries with an infinite median or no run time (1)" in cost
    n_runs_low = int((frame["energy"] <= 0).sum())
    assert f"so the {n_runs_low} values ≤ 0 are drawn too" in versus
    assert "Not shown: runs with an infinite value (3)" in versus
    # a predictive metric (any sign) is drawn on a linear axis, nothing dropped
    doc = _Document(tmp_path)
    figures._cost_figure(doc, frame.assign(test_loglik=-frame["time_run"]), palette,
                        "test_loglik", "loglik")
    assert "axis is linear" in doc.md[0] and "Not shown" not in doc.md[0]


def test_symlog_threshold_is_the_typical_standard_error_or_the_smallest_value():
    from analysis.figures import _linear_threshold

    values = pd.Series([-2e-4, 0.0, 3e-3, 0.5])
    assert _linear_threshold(values, pd.Series([8e-4, 7e-4, 0.0, np.nan]))[0] == 1e-3
    # a deterministic metric: every positive value stays on the logarithmic part
    threshold, why = _linear_threshold(values, pd.Series([0.0] * 4))
    assert threshold == 1e-3 and "smallest positive value" in why
    assert _linear_threshold(pd.Series([4e-6, 1.0]), None)[0] == 1e-6


def test_compare_help_lists_every_verdict_and_the_exit_codes(capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as stop:
        main(["compare", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    verdicts = text.split("verdicts:", 1)[1].split("exit codes:", 1)[0]
    for verdict in compare.VERDICTS:
        assert verdict in verdicts, verdict
    timing = text.split("run-time verdicts", 1)[1].split("exit codes:", 1)[0]
    assert "never gating" in timing
    assert all(word in timing for word in ("slower", "faster", "same"))
    assert f"{compare.TIME_RATIO}x" in timing
    codes = text.split("exit codes:", 1)[1]
    for code, meaning in (("0", "nothing regressed"), ("1", "worse"), ("2", "bad input")):
        assert f"  {code}  " in codes and meaning in codes
