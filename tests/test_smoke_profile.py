"""Every built-in profile is valid; the smoke profile runs and matches the CI baseline.

This is the regression gate: ``results/baseline-smoke`` holds a committed smoke
run; a change that makes a solver worse beyond the per-metric tolerances, or
makes a run fail, fails this test (``gfbench compare`` exit 1).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from execution import store
from execution.grid import BadInput, expand
from cli.profiles import builtin_profiles, read_profile, to_config

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline-smoke"


SHARED_BLR = Path(__file__).resolve().parents[2] / "shared" / "data" / "blr"


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_builtin_profile_expands(name, monkeypatch, tmp_path):
    monkeypatch.setenv("GFBENCH_NO_DOWNLOAD", "1")
    # the blr profile needs data files: the shared copies where present, else it must
    # refuse to expand with a message naming the missing file
    monkeypatch.setenv("GFBENCH_DATA", str(SHARED_BLR if SHARED_BLR.is_dir() else tmp_path))
    if name == "blr" and not SHARED_BLR.is_dir():
        with pytest.raises(BadInput, match="benchmarks.mat"):
            expand(to_config(read_profile(name)))
        return
    specs = expand(to_config(read_profile(name)))
    assert specs and len({s["run_id"] for s in specs}) == len(specs)


@pytest.mark.slow
def test_smoke_profile_runs_and_matches_the_committed_baseline(gfbench, tmp_path):
    out = tmp_path / "smoke"
    code, _, err = gfbench("run", "--profile", "smoke", "--quiet", "--out", out)
    assert code == 0, err
    frame = store.load(out)
    assert set(frame["status"]) <= {"ok", "skipped"}
    assert (out / "report" / "report.html").is_file()
    assert BASELINE.is_dir(), "results/baseline-smoke is missing"
    code, stdout, _ = gfbench("compare", BASELINE, out)
    assert code == 0, stdout
    assert "same" in stdout
