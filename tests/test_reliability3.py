"""Reliability, round 3: processes that leave the run's group, a runner killed while a
solver holds the GIL, disks that cannot be written, interrupted reports, limits that
make no sense, and tasks whose reference is broken.

Fixture solvers and tasks live in faulty_solvers.py and faulty_tasks.py (plugin paths).
Processes left behind are found by a tag no other process carries.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TESTS_DIR
from execution import store
from test_attacks import OU, rows, sleepers, wait_until

BASELINE = Path(__file__).resolve().parents[1] / "results" / "baseline-smoke"


def tagged(tag: str) -> list[int]:
    """Pids of live processes whose command line carries ``tag``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if tag.encode() in cmd and state != "Z":
                found.append(int(entry))
    return found


def env_with(**extra: str) -> dict:
    return {**os.environ, **extra,
            "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}


# --- 1. processes that leave the run's process group ------------------------------------------
def test_a_daemonised_child_dies_with_its_run_at_its_end_and_at_its_timeout(gfbench, tmp_path):
    # the sleep is started through an intermediate that exits, in a session of its own
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:SpawnsDaemon",
                         "-P", "faulty_solvers:SpawnsDaemon.tag=311.25", "--no-report",
                         "--out", tmp_path / "a")
    assert code == 0
    assert wait_until(lambda: not sleepers("311.25"), 5)
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:SpawnsDaemon",
                         "-P", "faulty_solvers:SpawnsDaemon.tag=312.25",
                         "-P", "faulty_solvers:SpawnsDaemon.delay=60", "--timeout", "3",
                         "--no-report", "--out", tmp_path / "b")
    assert code == 1 and rows(tmp_path / "b")["status"].iloc[0] == "timeout"
    assert wait_until(lambda: not sleepers("312.25"), 5)


def test_memory_of_a_child_in_its_own_session_counts_against_the_run(gfbench, tmp_path):
    code, _, err = gfbench("run", *OU, "--solver", "faulty_solvers:HogChild",
                           "-P", "faulty_solvers:HogChild.tag=313.25",
                           "-P", "faulty_solvers:HogChild.mb=800", "--max-memory", "400M",
                           "--no-report", "--out", tmp_path)
    assert code == 1
    row = rows(tmp_path).iloc[0]
    assert row["status"] == "oom"
    # the wording says how much, counting what, against which limit
    assert re.search(r"killed using \d+ MB of resident memory \(the run process and the 1 "
                     r"process it started, together\), over the 400 MB limit a run may use "
                     r"\(--max-memory\)", row["error"]), row["error"]
    assert wait_until(lambda: not tagged("313.25"), 5)


# --- 2. kill -9 of the runner while a solver holds the GIL ------------------------------------
def _processes_with(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (everything one runner started)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in environ and state != "Z":
                found.append(int(entry))
    return found


@pytest.mark.parametrize("jobs", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_kill_9_of_the_runner_while_a_solver_holds_the_gil_leaves_nothing(tmp_path, jobs):
    marker = f"GFBENCH_TEST_GIL={tmp_path}"
    pid_file = tmp_path / "pid"
    cmd = [sys.executable, "-m", "cli", "run", *OU, "--solver", "faulty_solvers:HoldsGil",
           "-P", "faulty_solvers:HoldsGil.tag=314.25", "--seeds", jobs, "-j", jobs,
           "--no-report", "--out", str(tmp_path / "out")]
    runner = subprocess.Popen(cmd, env=env_with(GFBENCH_TEST_GIL=str(tmp_path),
                                                GFBENCH_TEST_PID_FILE=str(pid_file)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # every run process is inside its GIL-holding C call, its session-leaving child started
        assert wait_until(lambda: len(list(tmp_path.glob("pid.*"))) == int(jobs)
                          and len(sleepers("314.25")) == int(jobs), 60)
        time.sleep(0.5)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
        assert wait_until(lambda: not _processes_with(marker), 5), _processes_with(marker)
        assert not sleepers("314.25")
    finally:
        for pid in _processes_with(marker) + sleepers("314.25"):
            os.kill(pid, signal.SIGKILL)


# --- 3. writers that cannot write: exit 2, never 1 --------------------------------------------
def test_a_run_whose_result_cannot_be_written_stops_with_exit_2_keeping_earlier_runs(
        gfbench, tmp_path):
    code, _, err = gfbench("run", *OU, "--solver", "exact", "--solver",
                           "faulty_solvers:DiskFull", "--seeds", "2", "--out", tmp_path)
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("gfbench: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert "runs finished before are kept" in errors[0]
    valid, corrupt = store.scan(tmp_path)
    assert not corrupt and all(p["spec"]["solver"] == "exact" for p in valid.values())
    assert not (tmp_path / "results.csv").exists()  # nothing half-written either
    # the next invocation resumes once there is room
    code, _, err = gfbench("run", *OU, "--solver", "exact", "--seeds", "2", "--no-report",
                           "--out", tmp_path)
    assert code == 0 and f"{len(valid)} already done" in err


def _full(path, *args):
    raise store.StoreError(f"cannot write {path}: No space left on device")


@pytest.mark.parametrize("command", ["run", "leaderboard", "compare", "prune"])
def test_every_command_that_cannot_write_says_so_in_one_line_with_exit_2(
        gfbench, tmp_path, monkeypatch, command):
    out = tmp_path / "out"
    assert gfbench("run", *OU, "--solver", "exact", "--no-report", "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    if command == "compare":  # a directory where its table goes: nothing patched
        (tmp_path / "table.csv").mkdir()
        argv = ["compare", out, out, "--out", tmp_path / "table.csv"]
    else:
        monkeypatch.setattr(store, "atomic_write_text", _full)
        monkeypatch.setattr(store, "atomic_write_bytes", _full)
        argv = {"run": ["run", *OU, "--solver", "exact", "--seeds", "2", "--no-report",
                        "--out", out],
                "leaderboard": ["leaderboard", out],
                "prune": ["prune", out, "--profile", "smoke", "--delete"]}[command]
    code, _, err = gfbench(*argv)
    errors = [line for line in err.splitlines() if line.startswith("gfbench: error:")]
    assert code == 2 and "Traceback" not in err and len(errors) == 1, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in out.rglob(".*.tmp")]


# --- 4. interrupted reports, limits, parameters ------------------------------------------------
@pytest.mark.slow
def test_an_interrupted_report_leaves_the_previous_one_whole(gfbench, tmp_path, monkeypatch):
    out = tmp_path / "out"
    grid = ["run", *OU, "--solver", "exact", "--solver", "em", "-P", "em.n_particles=100",
            "--no-report", "--out", out]
    assert gfbench(*grid)[0] == 0
    assert gfbench("report", out)[0] == 0
    report = out / "report"
    before = {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert any(p.suffix == ".png" for p in before)
    assert gfbench(*grid, "--seeds", "3")[0] == 0  # the next report's figures differ
    writes = []
    real = store.atomic_write_bytes

    def interrupted(path, writer):
        writes.append(path)
        if len(writes) == 2:  # Ctrl-C in the middle of the figures
            raise KeyboardInterrupt
        real(path, writer)

    monkeypatch.setattr(store, "atomic_write_bytes", interrupted)
    code, _, err = gfbench("report", out)
    assert code == 130 and "previous report" in err
    after = {p.relative_to(report): p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert after == before  # old markdown, HTML and figures, together; no staging left


def test_sigint_stops_a_report_even_when_the_shell_ignored_it(tmp_path):
    out = tmp_path / "report"
    # a script's background job inherits SIGINT ignored: `kill -INT` must still stop it
    runner = subprocess.Popen([sys.executable, "-m", "cli", "report", str(BASELINE),
                               "--out", str(out)], env=env_with(),
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: list(out.glob(".staging.*/figures/*.png")), 60)
        runner.send_signal(signal.SIGINT)
        _, err = runner.communicate(timeout=30)
    finally:
        runner.kill()
    assert runner.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out.iterdir()) == []  # no half-written report, no staging directory


def test_the_default_memory_limit_follows_the_effective_jobs(gfbench, tmp_path):
    from execution.resources import default_max_memory

    code, _, err = gfbench("run", *OU, "--solver", "exact", "-j", "64", "--no-report",
                           "--out", tmp_path)
    assert code == 0 and "-j 64 reduced to 1" in err
    assert f"at most {default_max_memory(1) / 2**30:.1f} GB of memory each" in err


def test_sbtm_without_training_is_refused_only_without_its_linear_part(gfbench, tmp_path):
    base = ["run", "--task", "ou", "--solver", "sbtm", "-P", "sbtm.inner_steps=0", "--dry-run"]
    assert gfbench(*base, "--out", tmp_path)[0] == 0  # the linear part alone: documented
    code, _, err = gfbench(*base, "-P", "sbtm.quadratic=false", "--out", tmp_path)
    assert code == 2 and "inner_steps=0 needs quadratic=true" in err


# --- 5. a broken reference is the task's fault --------------------------------------------------
def test_a_task_whose_reference_is_broken_gets_error_rows_that_name_it(gfbench, tmp_path):
    tasks = ["GoodTask", "BadShapeReference", "NaNReference", "NaNLogDensity"]
    argv = [a for name in tasks for a in ("--task", f"faulty_tasks:{name}")]
    code, _, err = gfbench("run", *argv, "--solver", "em", "-P", "em.n_particles=100",
                           "--metrics", "energy,symkl", "--quiet", "--no-report",
                           "--out", tmp_path)
    assert code == 1
    frame = store.load(tmp_path).set_index("task")
    assert frame.loc["good_gaussian", "status"] == "ok"
    expected = {"bad_shape_reference": "returned samples of shape (64, 2); expected (64, 1)",
                "nan_reference": "returned non-finite samples",
                "nan_log_density": "returned NaN or +inf log-densities"}
    for task, needle in expected.items():
        row = frame.loc[task]
        assert row["status"] == "error" and row["error"].startswith(f"task {task}'s reference")
        assert needle in row["error"], row["error"]
        assert row[["energy", "symkl"]].isna().all()  # never a score for the solver
        assert f"on {task}(dim=1) seed 0: task {task}'s reference" in err
