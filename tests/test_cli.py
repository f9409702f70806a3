"""Bad input: one clear line on stderr, exit code 2, nothing written."""
from __future__ import annotations

import os

import pytest

from conftest import TINY
from execution import store

BASE = ["run", "--times", "0.1", "--seeds", "1", "--quiet"]


@pytest.mark.parametrize("argv, needle", [
    (["--task", "nope", "--solver", "em"], "unknown task"),
    (["--task", "ou", "--solver", "nope"], "unknown solver"),
    (["--task", "ou", "--solver", "em", "-P", "em.nope=1"], "nope"),
    (["--task", "ou", "--solver", "em", "-P", "ou.dim=0"], "dim"),
    (["--task", "ou", "--solver", "em", "-P", "em.dt=-1e-3"], "dt"),
    (["--task", "ou", "--solver", "em", "-P", "em.dt=nan"], "dt"),
    (["--task", "ou", "--solver", "em", "-P", "em.n_particles=inf"], "n_particles"),
    (["--task", "ou", "--solver", "em", "-P", "em.dt"], "-P"),
    (["--task", "ou", "--solver", "em", "-P", "emdt=1"], "-P"),
    (["--task", "ou", "--solver", "em", "--times", "0.1,abc"], "time"),
    (["--task", "ou", "--solver", "em", "--times", "-1"], "time"),
    (["--task", "ou", "--solver", "em", "--seeds", "x"], "seed"),
    (["--task", "ou", "--solver", "em", "-j", "0"], "jobs"),
    (["--task", "ou", "--solver", "em", "--timeout", "-5"], "timeout"),
    (["--task", "ou", "--solver", "em", "--metrics", "nope"], "unknown metric"),
    (["--task", "ou", "--solver", "em", "--backend", "nope"], "backend"),
    (["--profile", "no-such-profile"], "no profile"),
])
def test_bad_run_input_exits_2_with_one_line_and_writes_nothing(gfbench, tmp_path, argv, needle):
    out = tmp_path / "out"
    code, stdout, stderr = gfbench(*BASE, *argv, "--out", out)
    assert code == 2
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gfbench")
    assert needle.lower() in lines[0].lower()
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ("[run]\nseeds = 1\nbogus = 3\n", "bogus"),
    ("colour = 'red'\n", "colour"),
    ("[tasks.ou\ndim = [1]\n", "cannot parse"),
    ("[tasks.ou]\ndim = [1]\n[solvers.em]\nn_particles = []\n", "empty"),
    ("[run]\ntimeout = -1\n[tasks.ou]\n[solvers.em]\n", "timeout"),
    ("[tasks.ou]\ndim = [0]\n[solvers.em]\n", "dim"),
])
def test_bad_profiles_are_rejected(gfbench, tmp_path, text, needle):
    profile = tmp_path / "p.toml"
    profile.write_text(text)
    out = tmp_path / "out"
    code, _, stderr = gfbench("run", "--profile", profile, "--out", out)
    assert code == 2 and needle in stderr and not out.exists()


def test_yaml_profile_with_unknown_key_is_rejected(gfbench, tmp_path):
    profile = tmp_path / "p.yaml"
    profile.write_text("tasks:\n  ou: {dim: [1]}\nsolvers:\n  em: {}\nextra: 1\n")
    code, _, stderr = gfbench("run", "--profile", profile, "--out", tmp_path / "o")
    assert code == 2 and "extra" in stderr


def test_unwritable_results_directory_is_a_clear_error(gfbench, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, stderr = gfbench(*BASE, "--task", "ou", "--solver", "exact", "--out",
                              blocker / "sub")
    assert code == 2 and "is a file" in stderr
    assert blocker.read_text() == "not a directory"


def test_report_leaderboard_compare_reject_non_results_directories(gfbench, tmp_path):
    for argv in (["report", tmp_path], ["leaderboard", tmp_path],
                 ["compare", tmp_path, tmp_path]):
        code, _, stderr = gfbench(*argv)
        assert code == 2 and "not a gfbench results directory" in stderr


def test_unknown_subcommand_and_option_exit_2(gfbench):
    assert gfbench("frobnicate")[0] == 2
    assert gfbench("run", "--frobnicate")[0] == 2


def test_dry_run_lists_runs_without_writing(gfbench, tmp_path):
    code, stdout, _ = gfbench("run", *[a for a in TINY if a != "--no-report"], "--dry-run",
                              "--out", tmp_path / "d")
    last = stdout.strip().splitlines()[-1]
    assert code == 0 and last.startswith("8 runs, estimated wall time") \
        and not (tmp_path / "d").exists()


def test_dry_run_on_a_resumed_grid_counts_what_is_done_and_estimates_the_rest(gfbench,
                                                                               tmp_path):
    grid = ["--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--solver", "exact",
            "-P", "exact.n_samples=256", "--metrics", "energy", "--quiet", "--no-report",
            "--out", tmp_path / "r"]
    assert gfbench("run", *grid, "--seeds", "1")[0] == 0
    before = sorted(store.runs_dir(tmp_path / "r").iterdir())
    code, stdout, _ = gfbench("run", *grid, "--seeds", "3", "--dry-run")
    lines = stdout.strip().splitlines()
    assert code == 0
    assert f"gfbench: 3 runs, 1 already done in {tmp_path / 'r'}; 2 to run" in lines[0]
    assert lines[-1].startswith("2 runs, estimated wall time")
    assert sorted(store.runs_dir(tmp_path / "r").iterdir()) == before
    # a finished grid says so (it was once "0 runs, estimated wall time unknown")
    code, stdout, _ = gfbench("run", *grid, "--seeds", "1", "--dry-run")
    assert code == 0 and stdout.strip().splitlines()[-1] == \
        "nothing to run: every run of this grid is done"


def test_list_names_tasks_solvers_and_metrics(gfbench):
    code, stdout, _ = gfbench("list")
    assert code == 0
    for name in ("ou", "em", "exact", "symkl", "energy"):
        assert name in stdout


@pytest.mark.parametrize("content", [None, b"not a MATLAB file"])
def test_missing_or_corrupt_data_file_is_bad_input(gfbench, tmp_path, monkeypatch, content):
    """A data set that is absent (downloads off) or fails its checksum: exit 2, nothing run."""
    monkeypatch.setenv("GFBENCH_NO_DOWNLOAD", "1")
    data = tmp_path / "data"
    data.mkdir()
    if content is not None:
        (data / "benchmarks.mat").write_bytes(content)
    out = tmp_path / "out"
    code, _, stderr = gfbench(*BASE, "--task", "bayesian_logreg", "--solver", "em",
                              "-P", "bayesian_logreg.dataset=german",
                              "-P", f"bayesian_logreg.data_dir={data}", "--out", out)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "benchmarks.mat" in lines[0]
    assert not out.exists()


def test_profile_blocks_may_set_their_own_seeds(gfbench, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text("[run]\nseeds = 2\n"
                       "[[grid]]\ntasks.ou = { dim = [1] }\nsolvers.exact = {}\n"
                       "[[grid]]\nseeds = 5\ntasks.ou = { dim = [2] }\nsolvers.exact = {}\n")
    code, stdout, _ = gfbench("run", "--profile", profile, "--dry-run")
    assert code == 0 and stdout.strip().splitlines()[-1].startswith("7 runs,")
    code, stdout, _ = gfbench("run", "--profile", profile, "--seeds", "1", "--dry-run")
    assert code == 0 and stdout.strip().splitlines()[-1].startswith("2 runs,")


@pytest.mark.slow
def test_files_get_the_users_umask(gfbench, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "m"
        assert gfbench("run", *[a for a in TINY if a != "--no-report"], "--out", out)[0] == 0
        assert gfbench("leaderboard", out)[0] == 0
    finally:
        os.umask(old)
    files = [*store.runs_dir(out).glob("*.json"), out / "results.csv", out / "results.parquet",
             out / "timings.csv", out / "leaderboard.md", out / "report" / "report.html",
             out / "report" / "report.md", *(out / "report" / "figures").glob("*.png")]
    assert len(files) > 10
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {"0o644"}


def test_dry_run_estimates_the_wall_time_from_committed_timings(gfbench, tmp_path, monkeypatch):
    from cli import estimate

    code, stdout, _ = gfbench("run", *TINY, "--dry-run")
    assert "unknown" in stdout.splitlines()[-1]
    timed = tmp_path / "committed"
    timed.mkdir()
    (timed / "timings.csv").write_text(
        "task,task_config,solver,solver_config,seconds,n_runs\n"
        'ou,dim=1,em,"batch_size=0,dt=0.001,n_particles=200",30,3\n'
        'ou,dim=2,em,"batch_size=0,dt=0.001,n_particles=200",90,3\n')
    monkeypatch.setattr(estimate, "PROJECT_RESULTS", tmp_path)
    monkeypatch.setattr(estimate, "machine_load", lambda: (0.0, 2))  # an idle 2-core machine
    code, stdout, _ = gfbench("run", *TINY, "--dry-run", "-j", "2")
    lines = stdout.splitlines()
    assert code == 0
    assert any(line.split()[:3] == ["em", "4", "runs"] and "4 min of compute" in line
               for line in lines)
    assert lines[-1] == ("8 runs, estimated wall time 2 min at -j 2 plus 4 runs of unknown "
                         "time")
    assert lines[-2].startswith("basis: median seconds per run") \
        and "results/committed/timings.csv" in lines[-2]
    # on a busy machine the estimate is a range: as timed, and slowed by the load now
    monkeypatch.setattr(estimate, "machine_load", lambda: (4.0, 2))
    code, stdout, _ = gfbench("run", *TINY, "--dry-run", "-j", "2")
    assert stdout.splitlines()[-1] == (
        "8 runs, estimated wall time 2 min (idle machine) to 6 min (load 4.0 on 2 cores now) "
        "at -j 2 plus 4 runs of unknown time")


def test_dry_run_prints_the_summary_and_lists_runs_only_when_verbose(gfbench):
    code, stdout, _ = gfbench("run", *TINY, "--dry-run")
    lines = stdout.strip().splitlines()
    assert code == 0 and len(lines) == 4  # em, exact, the basis, the total
    assert lines[2].startswith("basis: ") and "timings.csv" in lines[2]
    code, verbose, _ = gfbench("run", *TINY, "--dry-run", "--verbose")
    listed = verbose.strip().splitlines()
    assert code == 0 and listed[:4] == lines  # the summary first, then one line per run
    assert len(listed) == 4 + 8 and all(" seed " in line for line in listed[4:])


def test_help_texts_have_descriptions_defaults_and_examples(capsys):
    from cli.main import main

    assert main([]) == 2
    assert "usage: gfbench" in capsys.readouterr().err
    for command in ("run", "report", "leaderboard", "compare", "prune", "list"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert f"usage: gfbench {command}" in text and "gfbench gfbench" not in text
        if command != "list":
            assert "example" in text
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    text = " ".join(text.split())  # argparse wraps lines
    for default in ("default 1", "default: all", "(default: 80% of it",
                    "default gfbench-results", "one hour"):
        assert default in text, default


@pytest.mark.slow
def test_progress_is_printed_as_lines_without_a_terminal(gfbench, tmp_path):
    argv = [a for a in TINY if a != "--quiet"]
    code, _, err = gfbench("run", *argv, "--out", tmp_path / "p")
    assert code == 0
    assert "gfbench: 8/8 runs done after" in err and "\r" not in err


def test_each_failed_run_is_named_with_its_reason_and_counted_even_when_quiet(gfbench, tmp_path):
    code, _, err = gfbench("run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.1",
                           "--solver", "faulty_solvers:Raises",
                           "--solver", "faulty_solvers:ReturnsNaN",
                           "--solver", "faulty_solvers:KillsItself", "--solver", "exact",
                           "-P", "exact.n_samples=256", "--metrics", "energy",
                           "--quiet", "--no-report", "--out", tmp_path / "f")
    lines = err.splitlines()
    assert code == 1, err
    assert "gfbench: [error] faulty_raises(n=64) on ou(dim=1) seed 0: RuntimeError: deliberate " \
           "failure inside run()" in err
    assert "gfbench: [error] faulty_sigkill(n=64) on ou(dim=1) seed 0: run process killed by " \
           "signal SIGKILL" in lines
    assert "gfbench: [diverged] faulty_nan(n=64) on ou(dim=1) seed 0: non-finite samples" in lines
    assert not any("exact" in line for line in lines if "[" in line)  # ok runs stay quiet
    assert lines[-1].startswith("gfbench: 3 of 4 runs failed (diverged 1, error 2); each one's "
                                "reason is in the 'error' column of ")
