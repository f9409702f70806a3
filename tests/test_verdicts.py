"""Verdicts an expert would sign: the oracle heads every ranking, particle sets are judged
as particle sets, +∞ stays ∞, the gate cannot pass by accident, run ids follow the code."""
from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import aggregate, leaderboard
from execution import registry, store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_grid(tmp_path_factory):
    """OU and the mixture with the oracle, particle sets of two sizes, the exact JKO
    iterate, SVGD's 200 repulsive particles and a mode-dropping law."""
    from cli.main import main

    out = tmp_path_factory.mktemp("verdicts")
    common = ["--seeds", "3", "--quiet", "--no-report", "-j", "2", "--out", str(out),
              "--metrics", "energy,symkl,symkl_kde"]
    assert main(["run", "--task", "ou", "-P", "ou.dim=1,3", "--times", "0.5",
                 "--solver", "exact", "--solver", "em", "--solver", "gaussian_jko",
                 "--solver", "faulty_solvers:HalfSupport", "-P", "em.n_particles=200,2000",
                 "-P", "gaussian_jko.h=0.05", *common]) == 0
    assert main(["run", "--task", "stationary_gmm", "-P", "stationary_gmm.dim=2",
                 "--times", "1.0", "--solver", "exact", "--solver", "svgd",
                 "--solver", "faulty_solvers:HalfSupport", "-P", "svgd.n_particles=200",
                 "-P", "svgd.n_iter=400", *common]) == 0
    return out


def test_the_oracle_is_rank_one_in_every_table_it_is_in(fresh_grid):
    board = leaderboard.build_leaderboard(store.load(fresh_grid))
    oracle = board[board["solver"] == "exact"]
    assert len(oracle) == 6  # ou: 2 dims x (energy, symkl); mixture: energy, symkl
    assert (oracle["rank"] == 1).all(), oracle[["task", "metric", "group", "rank"]]


def test_no_particle_set_scores_below_the_oracle_beyond_its_standard_error(fresh_grid):
    frame = store.load(fresh_grid)
    ok = frame[(frame["status"] == "ok") & frame["energy"].notna()]
    oracle = ok[ok["solver"] == "exact"].set_index(["task", "task_config", "seed"])
    particles = ok[ok["law"] == "particles"]
    assert set(particles["solver"]) == {"em", "svgd"}
    for _, row in particles.iterrows():
        floor = oracle.loc[(row["task"], row["task_config"], row["seed"])]
        assert row["energy"] >= floor["energy"] - np.hypot(row["energy_se"], floor["energy_se"]), \
            row[["solver", "task_config", "seed", "energy"]]
    # SVGD's 200 repulsive particles: at or above the oracle's median over seeds
    svgd = particles[particles["solver"] == "svgd"]["energy"]
    exact = ok[(ok["solver"] == "exact") & (ok["task"] == "stationary_gmm")]["energy"]
    assert svgd.median() >= exact.median()
    # the smaller particle set is the worse one: N particles are judged as N particles
    em = particles[particles["solver"] == "em"]
    assert em[em["solver.n_particles"] == 200]["energy"].median() > \
        em[em["solver.n_particles"] == 2000]["energy"].median()


def test_a_mode_dropping_law_is_infinite_shown_as_infinity_and_ranked_last(fresh_grid):
    frame = store.load(fresh_grid)
    half = frame[frame["solver"] == "half_support"]
    assert len(half) == 9  # ou dim 1, 3 and the mixture, 3 seeds each
    assert (half["status"] == "ok").all() and np.isposinf(half["symkl"]).all()
    notes = [store.note_for(n, "symkl") for n in half["metric_notes"]]
    assert all("KL(reference||solver) = inf" in n for n in notes)
    # stored as "inf" in the run files, not dropped
    payload = json.loads(next(p for p in store.runs_dir(fresh_grid).glob("*.json")
                              if "half_support" in p.read_text()).read_text())
    assert payload["rows"][0]["symkl"] == "inf"
    board = leaderboard.build_leaderboard(frame)
    for (task, group), table in board[board["metric"] == "symkl"].groupby(["task", "group"]):
        row = table[table["solver"] == "half_support"].iloc[0]
        assert row["rank"] == table["rank"].max() and row["rank"] > 1
        assert row["failed"] == row["n_inf"] == 3
        assert leaderboard.cell(row).startswith("∞")
    md = leaderboard.to_markdown(board)
    assert "∞" in md and "∞ in 3 runs" in md


def test_the_report_lists_an_ok_run_with_infinite_symkl_among_the_failures(fresh_grid, tmp_path):
    from analysis.report import write_report

    paths = write_report([fresh_grid], tmp_path / "report")
    md = paths["markdown"].read_text()
    section = md[md.index("Failed runs, infinite and invalid scores"):]
    assert "half_support" in section and "symkl = ∞" in section


def test_kde_and_monte_carlo_symkl_are_never_ranked_or_drawn_together(fresh_grid, tmp_path):
    board = leaderboard.build_leaderboard(store.load(fresh_grid))
    assert "symkl_kde" not in set(board["metric"])
    symkl = board[board["metric"] == "symkl"]
    assert not set(symkl["solver"]) & {"em(N=200)", "em(N=2000)", "svgd"}
    from analysis.report import write_report

    figures = {p.name for p in write_report([fresh_grid], tmp_path / "r")["figures"]}
    assert "ou_symkl_any_dim.png" not in figures
    assert {"ou_symkl_dim.png", "ou_symkl_kde_dim.png"} <= figures


def test_labels_show_only_what_varies_in_short_names():
    frame = pd.DataFrame({
        "task": "bayesian_logreg", "solver": ["em", "em", "svgd"],
        "solver.n_particles": [1000, 10000, 100], "solver.batch_size": [0, 0, 0],
        "solver.dt": [1e-3, 1e-3, np.nan], "task.dataset": ["german", "image", "german"],
        "task.split": [0, 1, 2], "task.data_dir": ["", "", ""], "seed": 0})
    assert aggregate.solver_labels(frame).tolist() == ["em(N=1000)", "em(N=10000)", "svgd"]
    assert aggregate.group_labels(frame).tolist() == ["dataset=german", "dataset=image",
                                                      "dataset=german"]
    assert aggregate.replicate_keys(frame).tolist() == ["seed=0,split=0", "seed=0,split=1",
                                                        "seed=0,split=2"]


def test_splits_are_pooled_like_seeds_one_rank_per_data_set():
    rows = []
    for split in range(4):
        for solver, acc in (("a", 0.80), ("b", 0.70)):
            rows.append({"task": "bayesian_logreg", "task_config": f"dataset=x,split={split}",
                         "task.dataset": "x", "task.split": split, "t": 1.0, "seed": 0,
                         "status": "ok", "solver": solver, "solver_config": "",
                         "test_loglik": -0.5 - (acc == 0.7) * 0.1 - 0.01 * split,
                         "test_loglik_se": 0.001, "test_accuracy": acc + 0.01 * split,
                         "test_accuracy_se": 0.0, "time_run": 1.0, "error": ""})
    board = leaderboard.build_leaderboard(pd.DataFrame(rows))
    assert set(board["group"]) == {"all"} and len(board) == 4  # 2 metrics x 2 solvers
    assert (board[board["solver"] == "a"]["rank"] == 1).all()
    assert (board[board["solver"] == "b"]["rank"] == 2).all()
    assert (board["n_runs"] == 4).all()


def test_one_replicate_gets_the_interval_of_its_monte_carlo_error():
    low, high = aggregate.bootstrap_median_interval(np.array([0.5]), np.array([0.01]))
    assert low == pytest.approx(0.5 - 1.645 * 0.01, abs=2e-3)
    assert high == pytest.approx(0.5 + 1.645 * 0.01, abs=2e-3)
    low, high = aggregate.bootstrap_median_interval(np.array([0.001]), np.array([0.01]),
                                                    lower_bound=0.0)
    assert low == 0.0 and high > 0.01


def test_an_entry_at_its_floor_cannot_be_beaten_and_noise_never_separates():
    def entry(values, se):
        return pd.DataFrame({"value": values, "se": se}, index=[f"s{i}" for i in
                                                                 range(len(values))])

    oracle = entry([0.0004, -0.0003, 0.0001], [0.0005] * 3)
    lucky = entry([-0.002, -0.003, -0.0025], [0.0001] * 3)  # unbiased noise below 0
    ranks = leaderboard.rank_entries({"oracle": oracle, "lucky": lucky}, True, 0.0)
    assert ranks["oracle"] == 1
    good = entry([0.010, 0.012, 0.011], [0.001] * 3)
    bad = entry([0.050, 0.060, 0.055], [0.001] * 3)
    ranks = leaderboard.rank_entries({"good": good, "bad": bad, "oracle": oracle}, True, 0.0)
    assert ranks == {"good": 2, "bad": 3, "oracle": 1}
    # overlapping noise: a tie, in both directions of the metric
    close = entry([0.0105, 0.0118, 0.0112], [0.001] * 3)
    assert leaderboard.rank_entries({"good": good, "close": close}, True) == \
        {"good": 1, "close": 1}
    assert leaderboard.rank_entries({"good": good, "bad": bad}, False) == {"good": 2, "bad": 1}
    # paired: a consistent small gap separates even when seeds spread widely
    base = entry([0.1, 0.5, 0.9], [1e-4] * 3)
    above = entry([0.11, 0.51, 0.91], [1e-4] * 3)
    assert leaderboard.rank_entries({"base": base, "above": above}, True)["above"] == 2


def test_the_committed_leaderboard_has_the_oracle_first_everywhere():
    path = ROOT / "results" / "leaderboard.csv"
    rows = list(csv.DictReader(path.open(newline="")))
    oracle = [r for r in rows if r["solver"] == "exact"]
    assert oracle, "the committed leaderboard has no oracle rows"
    assert all(float(r["rank"]) == 1 for r in oracle), \
        [(r["task"], r["metric"], r["group"], r["rank"]) for r in oracle if float(r["rank"]) != 1]


# --- the gate -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ou_results(fresh_grid, tmp_path_factory):
    """The OU part of the fresh grid in its own directory."""
    out = tmp_path_factory.mktemp("ou_only")
    store.runs_dir(out).mkdir()
    for path in store.runs_dir(fresh_grid).glob("*.json"):
        if json.loads(path.read_text())["spec"]["task"] == "ou":
            shutil.copy(path, store.runs_dir(out))
    return out


def test_compare_refuses_to_pass_when_nothing_overlaps(gfbench, fresh_grid, ou_results,
                                                       tmp_path):
    mixture = tmp_path / "mixture"
    store.runs_dir(mixture).mkdir(parents=True)
    for path in store.runs_dir(fresh_grid).glob("*.json"):
        if json.loads(path.read_text())["spec"]["task"] == "stationary_gmm":
            shutil.copy(path, store.runs_dir(mixture))
    code, _, err = gfbench("compare", ou_results, mixture)
    assert code == 2 and "share no configuration" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    store.runs_dir(empty).mkdir(parents=True)
    code, _, err = gfbench("compare", ou_results, empty)
    assert code == 2 and "nothing compared" in err


def test_compare_fails_on_missing_baseline_configurations(gfbench, fresh_grid, ou_results):
    code, out, _ = gfbench("compare", fresh_grid, ou_results)
    assert code == 1 and "REGRESSION missing" in out
    code, out, _ = gfbench("compare", fresh_grid, ou_results, "--allow-missing")
    assert code == 0 and "same" in out


def test_compare_names_corrupt_files_and_fails(gfbench, ou_results, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(ou_results, broken)
    victims = sorted(store.runs_dir(broken).glob("*.json"))[:2]
    victims[0].write_text(victims[0].read_text()[:100])
    payload = json.loads(victims[1].read_text())
    payload["rows"] = "notalist"
    victims[1].write_text(json.dumps(payload))
    code, out, _ = gfbench("compare", ou_results, broken)
    assert code == 1
    for victim in victims:
        assert f"CORRUPT new run file {victim}" in out
    code, _, err = gfbench("leaderboard", broken, "--out", tmp_path / "lb")
    assert code == 0 and all(str(v) in err for v in victims) and "2 unreadable" in err
    code, _, err = gfbench("report", broken, "--out", tmp_path / "rep")
    assert code == 0 and all(str(v) in err for v in victims)
    assert "2 unreadable run files" in (tmp_path / "rep" / "report.md").read_text()


@pytest.mark.parametrize("rtol", ["nan", "-1", "inf"])
def test_compare_validates_its_tolerance(gfbench, ou_results, rtol):
    code, _, err = gfbench("compare", ou_results, ou_results, "--rtol", rtol)
    assert code == 2 and "--rtol" in err


def test_compare_help_text(capsys):
    from cli.main import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("same", "worse", "new failure", "missing", "not comparable", "exit codes",
                 "--allow-missing"):
        assert word in text


def test_a_finite_value_that_becomes_infinite_is_worse():
    from analysis.compare import paired_verdict

    base = np.array([0.01, 0.012, 0.011])
    assert paired_verdict(base, np.array([0.01, np.inf, 0.011]), True, 0.25, 1e-3) == "worse"
    assert paired_verdict(np.array([np.inf] * 3), base, True, 0.25, 1e-3) == "better"
    assert paired_verdict(np.array([np.inf] * 3), np.array([np.inf] * 3), True, 0.25,
                          1e-3) == "same"
    # within 3 standard errors is noise, whatever the tolerance
    assert paired_verdict(base, base + 0.01, True, 0.0, 0.0, np.full(3, 0.01),
                          np.full(3, 0.01)) == "same"


# --- run ids follow the code -----------------------------------------------------------------------
def _plugin(tmp_path: Path, body: str) -> str:
    package = tmp_path / "plugin_pkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "mytask.py").write_text(textwrap.dedent(body))
    registry._closure_hash.cache_clear()
    registry.normalised_source.cache_clear()
    return "plugin_pkg.mytask:Quad"


TASK = '''
    """A plugin task: OU in 1-D with its own potential."""
    import numpy as np
    from tasks.ou import OrnsteinUhlenbeck


    class Quad(OrnsteinUhlenbeck):
        name = "quad"
        version = "1"

        def potential(self, x):
            # the potential
            return {expr}
'''


def test_editing_a_task_makes_its_runs_stale_and_a_comment_does_not(tmp_path, monkeypatch):
    from execution.grid import GridBlock, RunConfig, expand

    monkeypatch.syspath_prepend(str(tmp_path))

    def run_id(expr: str, comment: str = "") -> str:
        name = _plugin(tmp_path, TASK.replace("# the potential", "# " + comment
                                              ).format(expr=expr))
        import importlib
        import sys

        sys.modules.pop("plugin_pkg.mytask", None)
        importlib.invalidate_caches()
        config = RunConfig([GridBlock({name: {"dim": [1], "times": [0.5]}}, {"em": {
            "n_particles": [10]}})])
        return expand(config)[0]["run_id"]

    first = run_id("0.5 * (x ** 2).sum(1)")
    assert run_id("0.5 * (x ** 2).sum(1)", "a new comment") == first
    assert run_id("0.6 * (x ** 2).sum(1)") != first
    # a metric edit changes every run that computes it: its code is in the id too
    spec = expand(RunConfig([GridBlock({"ou": {"dim": [1]}}, {"em": {}})], metrics=["energy"]))[0]
    assert spec["metric_code"]["energy"] == registry.code_hash(registry.get_metric("energy"))
    assert spec["task_code"] == registry.code_hash(registry.get_task("ou"))


def test_a_task_closure_includes_the_numerical_core_it_shares_with_a_solver():
    closure = registry.module_closure("tasks.filtering_1d")
    assert "numerics.chang_cooper" in closure
    assert not any(name.startswith("solvers.") for name in closure)  # never the judged solver
    import inspect

    src = registry.normalised_source(Path(inspect.getsourcefile(registry.tasks()["ou"])))
    assert '"""' not in src and "make_spd_matrix" in src
    assert "Range of A's eigenvalues" not in src  # the docstring is not code


def test_the_committed_summaries_name_solvers_that_ran_in_most_tables():
    """A 'best' line never names a solver ranked in a minority of the task's tables (a 1-D
    method in a grid of dimensions), and states its coverage."""
    import re

    md = (ROOT / "results" / "standard" / "report" / "report.md").read_text()
    lines = [line for line in md.splitlines() if "Best mean rank without the oracle" in line]
    assert lines
    for line in lines:
        best = line[line.index("Best mean rank without the oracle"):]
        covered = re.findall(r"ranked in (\d+)/(\d+) tables", best)
        assert covered, best
        assert all(2 * int(k) >= int(n) for k, n in covered), best
    ou = next(line for line in lines if line.startswith("Rank 1 — dim=1: chang_cooper"))
    assert "chang_cooper" not in ou[ou.index("Best mean rank"):]


def test_best_line_counts_failures_and_names_ties():
    from analysis.report import _winners

    rows = []
    for group in ("a", "b", "c", "d"):
        rows += [{"group": group, "solver": "exact", "rank": 1, "failed": 0},
                 {"group": group, "solver": "steady", "rank": 2, "failed": 0},
                 {"group": group, "solver": "twin", "rank": 2, "failed": 0},
                 # failed everywhere but one table: ranked last where it failed
                 {"group": group, "solver": "flaky", "rank": 1 if group == "a" else 4,
                  "failed": 0 if group == "a" else 3}]
    rows.append({"group": "a", "solver": "one_d", "rank": 1, "failed": 0})
    text = _winners(pd.DataFrame(rows))
    best = text[text.index("Best"):]
    assert "one_d" not in best and "flaky" not in best
    assert "(tied)" in best and "steady" in best and "twin" in best and "4/4 tables" in best


def test_a_solvers_own_diagnostics_are_shown_beside_its_score():
    rows = [{"task": "ou", "task_config": "dim=2", "t": 0.5, "seed": seed, "status": "ok",
             "solver": solver, "solver_config": "", "energy": value, "energy_se": 1e-4,
             "time_run": 1.0, "error": "", "metric_notes": "{}",
             "info": json.dumps({"diagnostics": {"ibp_loss": loss}} if solver == "scvm" else {})}
            for seed in range(3)
            for solver, value, loss in (("scvm", 0.05 + 0.001 * seed, 2.0 + seed), ("em", 0.01, 0))]
    board = leaderboard.build_leaderboard(pd.DataFrame(rows))
    table = leaderboard.detail_table(board).set_index("solver")
    assert table.loc["scvm", "solver diagnostics"] == "ibp_loss=3"  # median over the seeds
    assert table.loc["em", "solver diagnostics"] == ""


def test_an_entry_alone_in_its_table_is_rank_one_of_one_and_no_win():
    from analysis.report import _winners

    rows = [{"task": "ou", "task_config": f"dim={dim}", "task.dim": dim, "t": 0.5, "seed": seed,
             "status": "ok", "solver": solver, "solver_config": "", "energy": value + 1e-3 * seed,
             "energy_se": 1e-4, "time_run": 1.0, "error": "", "metric_notes": "{}"}
            for seed in range(3)
            for dim, solver, value in ((1, "lonely", 0.5), (2, "lonely", 0.5), (2, "rival", 0.1))]
    # a solver that skips the table is not an opponent
    rows.append({**rows[0], "solver": "absent", "status": "skipped", "energy": float("nan"),
                 "error": "absent does not handle this task"})
    board = leaderboard.build_leaderboard(pd.DataFrame(rows))
    assert board[board["solver"] == "absent"]["rank"].isna().all()
    alone = board[(board["group"] == "dim=1") & (board["solver"] == "lonely")].iloc[0]
    assert alone["rank"] == 1 and alone["entries"] == 1
    assert leaderboard.SOLE_ENTRY in alone["note"]
    contested = board[board["group"] == "dim=2"].set_index("solver")
    assert (contested["entries"] == 2).all() and leaderboard.SOLE_ENTRY not in \
        contested.loc["rival", "note"]
    assert contested.loc["lonely", "rank"] == 2 and contested.loc["rival", "rank"] == 1
    wins = leaderboard.summary(board).set_index("solver")["wins"]
    assert wins["lonely"] == 0 and wins["rival"] == 1
    cells = leaderboard.matrix(board).set_index("solver")["wins"]
    assert cells["lonely"] == "0/2" and cells["rival"] == "1/1"
    assert "lonely (alone in its table)" in _winners(board)
