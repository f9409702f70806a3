"""An adversarial user's attacks, each kept from coming back.

Fixture solvers live in faulty_solvers.py (plugin paths on PYTHONPATH, as a
user's own solver would be). Processes left behind are looked for by a tag
no other process carries (a ``sleep`` of an odd duration).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import TESTS_DIR
from execution import store

OU = ["--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--metrics", "energy", "--quiet"]


def sleepers(tag: str) -> list[int]:
    """Pids of live ``sleep <tag>`` processes."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if cmd[:2] == [b"sleep", tag.encode()] and state != "Z":
                found.append(int(entry))
    return found


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def rows(out: Path) -> pd.DataFrame:
    return store.load(out).set_index("solver_path")


# --- limits ---------------------------------------------------------------------------------------
def test_jobs_are_capped_at_the_runs_and_cores_with_one_line(gfbench, tmp_path):
    code, _, err = gfbench("run", *OU, "--solver", "em", "-P", "em.n_particles=10", "--seeds", "2",
                           "-j", "1000", "--no-report", "--out", tmp_path)
    assert code == 0
    capped = [line for line in err.splitlines() if "-j 1000 reduced to" in line]
    assert len(capped) == 1 and ("2 runs to do" in capped[0] or "cores" in capped[0])


def test_a_run_over_its_memory_limit_is_an_oom_row_and_the_grid_goes_on(gfbench, tmp_path):
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:Hog", "--solver", "exact",
                         "-P", "faulty_solvers:Hog.mb=700", "--max-memory", "400M",
                         "--no-report", "--out", tmp_path)
    assert code == 1
    frame = rows(tmp_path)
    assert frame.loc["faulty_solvers:Hog", "status"] == "oom"
    assert "limit" in frame.loc["faulty_solvers:Hog", "error"]
    assert frame.loc["exact", "status"] == "ok"


# --- runs that end without a result -----------------------------------------------------------------
@pytest.mark.parametrize("solver, needle", [("faulty_solvers:ExitsZero", "exited with code 0"),
                                            ("faulty_solvers:SysExit", "SystemExit")])
def test_a_run_that_exits_without_a_result_is_an_error_row(gfbench, tmp_path, solver, needle):
    code, _, err = gfbench("run", *OU, "--solver", solver, "--seeds", "2", "--no-report",
                           "--out", tmp_path)
    assert code == 1 and "Traceback" not in err
    frame = store.load(tmp_path)
    assert len(frame) == 2 and (frame["status"] == "error").all()
    assert all(needle in e for e in frame["error"])
    assert "error 2" in err  # the summary counts them


def test_a_solver_returning_a_wrong_shape_is_an_error_row(gfbench, tmp_path):
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:BadShape", "--no-report",
                         "--out", tmp_path)
    frame = store.load(tmp_path)
    assert code == 1 and frame["status"].iloc[0] == "error"
    assert "shape (5, 7, 3)" in frame["error"].iloc[0]


# --- nothing outlives its run ------------------------------------------------------------------------
def test_children_of_a_run_die_with_it_at_its_end_and_at_its_timeout(gfbench, tmp_path):
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:SpawnsChild",
                         "-P", "faulty_solvers:SpawnsChild.tag=301.25", "--no-report",
                         "--out", tmp_path / "a")
    assert code == 0
    assert wait_until(lambda: not sleepers("301.25"), 5)
    code, _, _ = gfbench("run", *OU, "--solver", "faulty_solvers:SpawnsChild",
                         "-P", "faulty_solvers:SpawnsChild.tag=302.25",
                         "-P", "faulty_solvers:SpawnsChild.delay=60", "--timeout", "3",
                         "--no-report", "--out", tmp_path / "b")
    assert code == 1 and rows(tmp_path / "b")["status"].iloc[0] == "timeout"
    assert wait_until(lambda: not sleepers("302.25"), 5)


def test_kill_9_of_the_runner_alone_leaves_nothing_behind(tmp_path):
    env = {**os.environ, "GFBENCH_TEST_KILL": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "cli", "run", *OU, "--solver",
           "faulty_solvers:SpawnsChild", "-P", "faulty_solvers:SpawnsChild.tag=303.25",
           "-P", "faulty_solvers:SpawnsChild.delay=60", "--seeds", "2", "-j", "2",
           "--no-report", "--out", str(tmp_path)]
    runner = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert wait_until(lambda: len(sleepers("303.25")) == 2, 60)
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait()
    assert wait_until(lambda: not sleepers("303.25"), 15)

    def gfbench_processes() -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    env_text = Path(f"/proc/{entry}/environ").read_bytes()
                    cmd_text = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                if str(tmp_path).encode() in cmd_text or \
                        b"GFBENCH_TEST_KILL=" + str(tmp_path).encode() in env_text:
                    out.append(int(entry))
        return out

    assert wait_until(lambda: not gfbench_processes(), 15)


# --- bad input: one line, exit 2, nothing written ---------------------------------------------------------
BAD = [
    (["run", "--task", "ou", "--seeds", "99999999999999999999", "--dry-run"], "--seeds"),
    (["run", "--task", "ou", "-P", "ou.dim=1..99999999999", "--dry-run"], "limit"),
    (["run", "--task", "ou", "--seeds", "100000000", "--dry-run"], "--seeds"),
    (["run", "--task", "ou", "--seeds", "5..2", "--dry-run"], "empty range"),
    (["run", "--task", "ou", "--solver", ":", "--dry-run"], "plugin path"),
    (["run", "--task", "ou", "--solver", ".mod:Cls", "--dry-run"], "plugin path"),
    (["run", "--task", "ou", "--solver", "faulty_solvers:InitRaises", "--dry-run"],
     "deliberate failure"),
    (["run", "--task", "ou", "-P", "ou.dim=1000000000", "--dry-run"], "outside its range"),
    (["run", "--task", "ou", "--solver", "exact", "--times", "1e300", "--dry-run"], "times"),
    (["run", "--task", "ou", "--solver", "exact", "--max-memory", "lots"], "memory size"),
    (["run", "--task", "ou", "--solver", "exact", "--backend", "dask", "--scheduler",
      "tcp://127.0.0.1:1"], "Dask scheduler"),
    # plugins without a name, a limit no run can reach, a parameter that makes no sense
    (["run", "--task", "faulty_tasks:Nameless", "--solver", "exact", "--dry-run"], "no name"),
    (["run", "--task", "ou", "--solver", "faulty_solvers:Nameless", "--dry-run"], "no name"),
    (["run", "--task", "ou", "--solver", "exact", "--max-memory", "64T"], "physical memory"),
    (["run", "--task", "ou", "--solver", "sbtm", "-P", "sbtm.inner_steps=0",
      "-P", "sbtm.quadratic=false", "--dry-run"], "inner_steps=0"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_bad_input_is_one_line_exit_2_and_nothing_written(gfbench, tmp_path, argv, needle):
    out = tmp_path / "out"
    code, stdout, err = gfbench(*argv, "--out", out)
    assert code == 2, (stdout, err)
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("text, needle", [
    ('[run]\nretry_failed = "no"\n[tasks.ou]\n[solvers.exact]\n', "retry_failed"),
    ("[run]\nn_jobs = 1.5\n[tasks.ou]\n[solvers.exact]\n", "n_jobs"),
    ('[run]\nmetrics = "energy"\n[tasks.ou]\n[solvers.exact]\n', "metrics"),
])
def test_profile_values_of_the_wrong_type_are_bad_input(gfbench, tmp_path, text, needle):
    profile = tmp_path / "p.toml"
    profile.write_text(text)
    code, _, err = gfbench("run", "--profile", profile, "--out", tmp_path / "out")
    assert code == 2 and needle in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("occupied", ["runs", "results.csv"])
def test_an_output_path_of_the_wrong_kind_is_refused_before_any_run(gfbench, tmp_path, occupied):
    out = tmp_path / "out"
    out.mkdir()
    (out / occupied).mkdir() if "." in occupied else (out / occupied).write_text("x")
    code, _, err = gfbench("run", *OU, "--solver", "exact", "--out", out)
    assert code == 2 and occupied in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == [occupied]


def test_a_run_file_with_a_valid_checksum_but_a_broken_shape_is_corrupt(gfbench, tmp_path):
    out = tmp_path / "out"
    assert gfbench("run", *OU, "--solver", "exact", "--seeds", "2", "--no-report",
                   "--out", out)[0] == 0
    victim = sorted(store.runs_dir(out).glob("*.json"))[0]
    payload = json.loads(victim.read_text())
    payload["rows"][0]["t"] = "zzz"
    payload["checksum"] = store._checksum(payload["spec"], payload["rows"])
    victim.write_text(json.dumps(payload))
    assert store.read_run(victim) is None
    for argv in (["report", out, "--out", tmp_path / "r"], ["leaderboard", out]):
        code, _, err = gfbench(*argv)
        assert code == 0 and str(victim) in err and "Traceback" not in err
    code, _, err = gfbench("run", *OU, "--solver", "exact", "--seeds", "2", "--no-report",
                           "--out", out)
    assert code == 0 and "corrupt run file" in err and store.read_run(victim) is not None


def test_the_report_refuses_with_one_line_when_the_disk_is_full(gfbench, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert gfbench("run", *OU, "--solver", "exact", "--no-report", "--out", out)[0] == 0

    def full(path, writer):
        raise store.StoreError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(store, "atomic_write_bytes", full)
    code, _, err = gfbench("report", out)
    assert code == 2 and "No space left on device" in err and len(err.strip().splitlines()) == 1


def test_leaderboard_refuses_a_metric_the_results_do_not_have(gfbench, tmp_path):
    out = tmp_path / "out"
    assert gfbench("run", *OU, "--solver", "exact", "--no-report", "--out", out)[0] == 0
    code, _, err = gfbench("leaderboard", out, "--metric", "symkl_kde")
    assert code == 2 and "symkl_kde" in err


# --- leftovers and concurrent runners --------------------------------------------------------------
def test_temp_files_of_dead_writers_are_cleaned_by_the_next_run(gfbench, tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "report" / "figures").mkdir(parents=True)
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = [out / "runs" / f".abc.json.{dead}.x1.tmp",
             out / "report" / "figures" / f".f.png.{dead}.x2.tmp"]
    live = out / "runs" / f".def.json.{os.getpid()}.x3.tmp"
    for path in stale + [live]:
        path.write_text("partial")
    assert gfbench("run", *OU, "--solver", "exact", "--out", out)[0] == 0
    assert not any(p.exists() for p in stale) and live.exists()


@pytest.mark.slow
def test_concurrent_runners_compute_each_run_once_and_lose_nothing(tmp_path):
    log = tmp_path / "started.log"
    env = {**os.environ, "GFBENCH_TEST_LOG": str(log),
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "cli", "run", *OU, "--solver", "faulty_solvers:Logs",
           "--seeds", "6", "--no-report", "--out", str(tmp_path / "out")]
    runners = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    codes = [r.wait(timeout=180) for r in runners]
    assert codes == [0, 0, 0], [r.stderr.read() for r in runners]
    started = log.read_text().split()
    assert len(started) == 6 and len(set(started)) == 6  # every run computed exactly once
    frame = store.load(tmp_path / "out")
    assert len(frame) == 6 and not frame.duplicated(["run_id", "t"]).any()
    assert not list(store.runs_dir(tmp_path / "out").glob(".*.claim"))
