"""Densities are checked, not trusted; impossible values never rank and never pass the gate.

A solver's log-density enters SymKL through both KL directions, whose sum
cannot see a constant offset; each direction is stored with its standard
error, and so is an importance-sampling estimate of the density's mass.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from metrics.symkl import symkl_from_logs
from analysis import aggregate, leaderboard
from execution import store
from analysis.report import write_report


def _gauss(x):
    return -0.5 * x ** 2 - 0.5 * np.log(2 * np.pi)


@pytest.mark.parametrize("case", ["exact", "wider", "offset", "huge", "zero", "half"])
def test_symkl_checks_the_density_it_is_given(case):
    rng = np.random.default_rng(0)
    xp, xq = rng.standard_normal(8192), rng.standard_normal(8192)
    log_p = {"exact": _gauss, "wider": lambda x: _gauss(x / 1.1) - np.log(1.1),
             "offset": lambda x: _gauss(x) + 30.0, "huge": lambda x: np.full_like(x, 1e300),
             "zero": lambda x: np.full_like(x, -np.inf),
             "half": lambda x: np.where(x > 0, _gauss(x) + np.log(2.0), -np.inf)}[case]
    xs = {"wider": 1.1 * xp, "half": np.abs(xp)}.get(case, xp)
    value = symkl_from_logs(log_p(xs), _gauss(xs), _gauss(xq), log_p(xq))
    if case in ("exact", "wider"):
        assert not value.invalid and np.isfinite(value.value)
        assert value.parts["mass"] == pytest.approx(1.0, abs=4 * value.parts["mass_se"] + 1e-9)
        assert value.parts["kl_sr"] >= 0 and value.parts["kl_rs"] >= 0
    elif case == "half":  # normalised, but misses half the reference: ∞, not invalid
        assert not value.invalid and value.value == np.inf
        assert value.parts["mass"] == pytest.approx(1.0, abs=0.05)
    else:
        assert value.invalid and value.note.startswith("invalid")
    if case == "offset":
        # the sum is blind to it: both directions are needed
        assert value.value == pytest.approx(0.0, abs=1e-9)
        assert value.parts["kl_rs"] == pytest.approx(-30.0)
        assert "integrates to" in value.invalid


@pytest.fixture(scope="module")
def broken_grid(tmp_path_factory):
    from cli.main import main

    out = tmp_path_factory.mktemp("densities")
    assert main(["run", "--task", "ou", "-P", "ou.dim=2", "--times", "0.5", "--seeds", "3",
                 "--solver", "exact", "--solver", "gaussian_jko", "-P", "gaussian_jko.h=0.05",
                 "--solver", "faulty_solvers:Offset", "--solver", "faulty_solvers:Huge",
                 "--solver", "faulty_solvers:HalfSupport", "--metrics", "energy,symkl",
                 "--quiet", "--no-report", "--out", str(out)]) == 0
    return out


def test_offset_huge_and_half_support_densities_never_reach_rank_one(broken_grid):
    frame = store.load(broken_grid)
    for name in ("offset_density", "huge_density"):
        rows = frame[frame["solver"] == name]
        assert len(rows) == 3 and (rows["status"] == "ok").all()
        assert (aggregate.invalid_reasons(rows, "symkl") != "").all()
        assert rows["symkl_mass"].min() > 1e10  # the stored importance-sampling estimate
    board = leaderboard.build_leaderboard(frame)
    symkl = board[board["metric"] == "symkl"].set_index("solver")
    last = symkl["rank"].max()
    assert symkl.loc["exact", "rank"] == 1 and last > 1
    for name in ("offset_density", "huge_density", "half_support"):
        assert symkl.loc[name, "rank"] == last, symkl[["rank", "median", "note"]]
        assert symkl.loc[name, "failed"] == 3
    assert symkl.loc["offset_density", "status"] == "invalid"
    assert "invalid" in symkl.loc["offset_density", "note"]
    cells = leaderboard.matrix(board[board["metric"] == "symkl"]).set_index("solver")
    assert cells.loc["offset_density", "all"].startswith("failed")
    assert int(cells.loc["huge_density", "failures"]) == 3


def test_the_report_lists_invalid_densities_and_shows_infinity(broken_grid, tmp_path):
    md = write_report([broken_grid], tmp_path / "r")["markdown"].read_text()
    section = md[md.index("Failed runs, infinite and invalid scores"):]
    assert "offset_density" in section and "symkl invalid" in section
    assert "integrates to" in section
    # the solver summary: ∞ for the mode-dropping law, never a dash
    summary = aggregate.summarise(store.load(broken_grid).assign(label=lambda f: f["solver"]),
                                  ["symkl"])
    half = summary[summary["solver"] == "half_support"].iloc[0]
    assert aggregate.median_iqr(half, "symkl").startswith("∞")
    offset = summary[summary["solver"] == "offset_density"].iloc[0]
    assert aggregate.median_iqr(offset, "symkl") == "invalid (3)"


def _rewrite(out, solver: str, edit) -> None:
    """Rewrite ``solver``'s run files with ``edit(row)`` applied, checksums recomputed."""
    for path in store.runs_dir(out).glob("*.json"):
        payload = json.loads(path.read_text())
        if payload["spec"].get("solver_name", payload["spec"]["solver"]) != solver:
            continue
        rows = [edit(dict(row)) for row in payload["rows"]]
        store.write_run(out, payload["spec"], rows)


@pytest.mark.parametrize("crafted", [float("-inf"), float("nan"), -1.0, 1e300])
def test_crafted_values_never_rank_first_and_fail_the_gate(gfbench, broken_grid, tmp_path,
                                                           crafted):
    base, new = tmp_path / "base", tmp_path / "new"
    for out in (base, new):
        shutil.copytree(broken_grid, out)

    def craft(row):
        row["symkl"], row["symkl_se"], row["metric_notes"] = crafted, 0.001, "{}"
        return row

    _rewrite(new, "gaussian_jko", craft)
    frame = store.load(new)
    rows = frame[frame["solver"] == "gaussian_jko"]
    assert (aggregate.invalid_reasons(rows, "symkl") != "").all()
    symkl = leaderboard.build_leaderboard(frame)
    symkl = symkl[symkl["metric"] == "symkl"].set_index("solver")
    assert "gaussian_jko" in symkl.index  # never silently dropped
    assert symkl.loc["gaussian_jko", "rank"] > 1 and symkl.loc["exact", "rank"] == 1
    code, stdout, _ = gfbench("compare", base, new)
    assert code == 1, stdout
    assert "REGRESSION new failure" in stdout and "gaussian_jko" in stdout
