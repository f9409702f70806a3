"""``gfbench list``: every built-in profile gets a time (or says it has none), and
the run count it prints is the number of runs ``gfbench run --profile X`` runs.

The count must be that of :func:`execution.grid.expand`, which runs a spec asked for
by several ``[[grid]]`` blocks once (the standard profile's OU D = 1 JKO runs and
the study profile's D = 10 seed-0 ICNN-JKO runs are in two blocks each).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli import estimate
from execution import registry
from execution.grid import expand
from cli.profiles import builtin_profiles, read_profile, to_config

SHARED_BLR = Path(__file__).resolve().parents[2] / "shared" / "data" / "blr"
#: ``  standard           689 runs, ~3 h 14 min at -j 2 + 70 runs of unknown time``
PROFILE_LINE = re.compile(r"^  (\S+)\s+(\d+) runs, (.*)$")


def _listed_profiles(stdout: str) -> dict[str, tuple[int, str]]:
    """Profile name -> (runs, time text), from the PROFILES part of ``gfbench list``."""
    section = stdout.split("\nPROFILES", 1)[1].splitlines()[1:]
    found = {}
    for line in section:
        match = PROFILE_LINE.match(line)
        if match:
            found[match.group(1)] = (int(match.group(2)), match.group(3))
    return found


@pytest.fixture
def blr_data(monkeypatch, tmp_path):
    """The blr profile expands only with its data: the shared copy where present,
    else the data check is switched off (the run count does not depend on the data)."""
    monkeypatch.setenv("GFBENCH_NO_DOWNLOAD", "1")
    if SHARED_BLR.is_dir():
        monkeypatch.setenv("GFBENCH_DATA", str(SHARED_BLR))
    else:
        monkeypatch.setenv("GFBENCH_DATA", str(tmp_path))
        task = registry.get_task("bayesian_logreg")
        monkeypatch.setattr(task, "check_inputs", classmethod(lambda cls, params: None))


def test_list_gives_every_profile_a_time_or_says_it_has_none(gfbench):
    code, stdout, _ = gfbench("list")
    assert code == 0
    listed = _listed_profiles(stdout)
    assert set(listed) == set(builtin_profiles())
    timings = estimate.load_timings()
    for name, (runs, text) in listed.items():
        est = estimate.estimate_profile(read_profile(name), registry.index(), timings)
        if est.unknown == est.runs:
            assert text == "time unknown (no committed timings)", (name, text)
        else:
            assert re.match(r"~\d+ (s|min|h \d\d min) at -j \d+", text), (name, text)
            if est.unknown:
                assert text.endswith(f"+ {est.unknown} runs of unknown time"), (name, text)


def test_list_says_time_unknown_when_no_timings_are_installed(gfbench, monkeypatch,
                                                              tmp_path):
    # an install without the committed results/: no timings.csv anywhere
    monkeypatch.setattr(estimate, "PROJECT_RESULTS", tmp_path)
    code, stdout, _ = gfbench("list")
    assert code == 0
    assert "no timings.csv found" in stdout
    listed = _listed_profiles(stdout)
    assert set(listed) == set(builtin_profiles())
    assert {text for _, text in listed.values()} == {"time unknown (no committed timings)"}


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_list_count_is_the_number_of_runs_the_profile_runs(name, gfbench, blr_data):
    code, stdout, _ = gfbench("list")
    assert code == 0
    runs, _ = _listed_profiles(stdout)[name]
    assert runs == len(expand(to_config(read_profile(name))))


def test_runs_in_several_blocks_count_once_unless_their_times_differ(blr_data):
    block = {"tasks": {"ou": {"dim": [1, 2]}},
             "solvers": {"exact": {"n_samples": [512]}, "em": {"n_particles": [200]}}}
    other_times = {"tasks": {"ou": {"dim": [2], "times": [0.3]}},
                   "solvers": {"exact": {"n_samples": [512]}}}
    data = {"run": {"seeds": 2},
            "grid": [block, block,                         # the same runs twice
                     {**block, "seeds": [1, 5]},           # seed 1 again, seed 5 new
                     other_times]}                         # new: other times
    est = estimate.estimate_profile(data, registry.index(), {})
    assert est.runs == len(expand(to_config(data))) == 8 + 4 + 2
    assert est.per_solver["exact"][0] == 4 + 2 + 2


def test_a_block_may_set_its_own_metrics_without_changing_the_other_blocks_run_ids(tmp_path):
    """Block-level ``metrics`` replace the run's for that block only; the other blocks'
    run ids are those of the profile without the block; ``--metrics`` overrides all."""
    from cli.profiles import BadInput

    base = ('[run]\nseeds = 1\nmetrics = ["energy"]\n'
            '[[grid]]\ntasks.ou = { dim = [1], times = [0.5] }\nsolvers.exact = {}\n')
    extra = ('[[grid]]\nmetrics = ["energy", "symkl"]\n'
             'tasks.ou = { dim = [2], times = [0.5] }\nsolvers.exact = {}\n')
    (tmp_path / "a.toml").write_text(base)
    (tmp_path / "b.toml").write_text(base + extra)
    only = expand(to_config(read_profile(str(tmp_path / "a.toml"))))
    both = expand(to_config(read_profile(str(tmp_path / "b.toml"))))
    assert [s["run_id"] for s in both[:1]] == [s["run_id"] for s in only]
    assert set(both[0]["metrics"]) == {"energy"}
    assert set(both[1]["metrics"]) == {"energy", "symkl"}
    (tmp_path / "c.toml").write_text(base + extra.replace('["energy", "symkl"]', '"symkl"'))
    with pytest.raises(BadInput, match=r"grid\[1\].metrics"):
        to_config(read_profile(str(tmp_path / "c.toml")))


def test_command_line_metrics_override_every_block(gfbench, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text('[run]\nseeds = 1\n[[grid]]\nmetrics = ["energy", "symkl"]\n'
                       'tasks.ou = { dim = [1], times = [0.5] }\nsolvers.exact = {}\n')
    code, _, err = gfbench("run", "--profile", str(profile), "--metrics", "energy",
                           "--quiet", "--no-report", "--out", tmp_path / "out")
    assert code == 0, err
    import pandas as pd
    rows = pd.read_csv(tmp_path / "out" / "results.csv")
    assert "energy" in rows and "symkl" not in rows
