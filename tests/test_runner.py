"""The runner: determinism, resume, fault tolerance, atomic results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import TINY
from execution import store

METRICS = ["symkl", "symkl_kde", "energy"]


def metric_table(out: Path) -> pd.DataFrame:
    frame = store.load(out)
    keys = ["task", "task_config", "solver", "solver_config", "seed", "t"]
    return frame[keys + ["status"] + METRICS].sort_values(keys).reset_index(drop=True)


@pytest.mark.slow
def test_same_grid_gives_bit_identical_metrics_across_reruns_and_jobs(gfbench, tmp_path):
    assert gfbench("run", *TINY, "-j", "1", "--out", tmp_path / "a")[0] == 0
    assert gfbench("run", *TINY, "-j", "2", "--out", tmp_path / "b")[0] == 0
    a, b = metric_table(tmp_path / "a"), metric_table(tmp_path / "b")
    assert len(a) == 2 * 2 * 2 * 2 and (a["status"] == "ok").all()
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    # paired design: both solvers of one (task, seed) saw the same task
    assert a["symkl_kde"].notna().any() and a["symkl"].notna().any()


@pytest.mark.slow
def test_resume_completes_an_interrupted_grid_without_duplicates(gfbench, tmp_path):
    out = tmp_path / "r"
    assert gfbench("run", *TINY, "--out", out)[0] == 0
    files = sorted(store.runs_dir(out).glob("*.json"))
    assert len(files) == 8
    first = {p.name: p.read_bytes() for p in files}
    for p in files[:3]:  # as if the grid had been interrupted before these
        p.unlink()
    code, _, err = gfbench("run", *TINY, "--out", out)
    assert code == 0 and "3 to run" in err
    frame = store.load(out)
    assert len(frame) == 16 and not frame.duplicated(["run_id", "t"]).any()
    # untouched run files were not rewritten
    for p in files[3:]:
        assert p.read_bytes() == first[p.name]


@pytest.mark.slow
def test_failing_solvers_become_status_rows_and_the_grid_completes(gfbench, tmp_path):
    out = tmp_path / "f"
    code, _, err = gfbench(
        "run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--seeds", "1",
        "--solver", "exact", "--solver", "faulty_solvers:Raises",
        "--solver", "faulty_solvers:ReturnsNaN", "--solver", "faulty_solvers:Hangs",
        "--solver", "faulty_solvers:KillsItself", "--timeout", "15", "-j", "2",
        "--metrics", "energy", "--quiet", "--out", out)
    assert code == 1  # not every run ok
    frame = store.load(out).set_index("solver_path")
    assert frame.loc["exact", "status"] == "ok" and np.isfinite(frame.loc["exact", "energy"])
    assert frame.loc["faulty_solvers:Raises", "status"] == "error"
    assert "deliberate failure" in frame.loc["faulty_solvers:Raises", "error"]
    assert frame.loc["faulty_solvers:ReturnsNaN", "status"] == "diverged"
    assert frame.loc["faulty_solvers:Hangs", "status"] == "timeout"
    assert frame.loc["faulty_solvers:KillsItself", "status"] == "error"
    assert "SIGKILL" in frame.loc["faulty_solvers:KillsItself", "error"]
    assert (out / "results.csv").is_file()


def test_failed_runs_are_retried_unless_told_not_to(gfbench, tmp_path):
    args = ["run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--seeds", "1",
            "--solver", "faulty_solvers:Raises", "--quiet", "--no-report", "--out", tmp_path]
    gfbench(*args)
    _, _, err = gfbench(*args, "--no-retry")
    assert "0 to run" in err
    _, _, err = gfbench(*args)
    assert "1 to run" in err


@pytest.mark.slow
def test_corrupt_and_partial_run_files_are_detected_and_rerun(gfbench, tmp_path):
    out = tmp_path / "c"
    assert gfbench("run", *TINY, "--out", out)[0] == 0
    files = sorted(store.runs_dir(out).glob("*.json"))
    payload = json.loads(files[0].read_text())
    payload["rows"][0]["energy"] = 123.0  # tampered: checksum no longer matches
    files[0].write_text(json.dumps(payload))
    files[1].write_text(files[1].read_text()[:100])  # truncated
    assert store.read_run(files[0]) is None and store.read_run(files[1]) is None
    code, _, err = gfbench("run", *TINY, "--out", out)
    assert code == 0 and "2 to run" in err
    assert all(store.read_run(p) is not None for p in files)
    assert len(store.load(out)) == 16


def test_atomic_write_leaves_no_partial_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "x.parquet"

    def failing_writer(path):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        store.atomic_write_bytes(target, failing_writer)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_runner_killed_mid_grid_loses_and_duplicates_nothing(tmp_path):
    out = tmp_path / "k"
    args = [sys.executable, "-m", "cli", "run", "--task", "ou", "-P", "ou.dim=1",
            "--times", "0.1", "--seeds", "0..5", "--solver", "faulty_solvers:Slow",
            "-P", "faulty_solvers:Slow.delay=1.5", "--quiet", "--no-report", "--out", str(out)]
    env = {**os.environ}
    runner = subprocess.Popen(args, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(store.runs_dir(out).glob("*.json"))
                                         if store.runs_dir(out).is_dir() else []) < 2:
        time.sleep(0.2)
    os.killpg(runner.pid, signal.SIGKILL)  # runner and its run processes, no clean-up
    runner.wait()
    done_before = len(list(store.runs_dir(out).glob("*.json")))
    assert 2 <= done_before < 6
    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - done_before} to run" in rerun.stderr
    frame = store.load(out)
    assert sorted(frame["seed"]) == list(range(6)) and (frame["status"] == "ok").all()


def test_run_processes_exit_when_their_runner_is_killed(tmp_path):
    """Killing only the runner (not its process group) leaves no run computing."""
    out = tmp_path / "orphan"
    marker = tmp_path / "pids"
    args = [sys.executable, "-m", "cli", "run", "--task", "ou", "-P", "ou.dim=1",
            "--times", "0.1", "--seeds", "1", "--solver", "faulty_solvers:Slow",
            "-P", "faulty_solvers:Slow.delay=60", "--quiet", "--no-report", "--out", str(out)]
    env = {**os.environ, "GFBENCH_TEST_PID_FILE": str(marker)}
    runner = subprocess.Popen(args, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not marker.exists():
        time.sleep(0.2)
    assert marker.exists(), "the slow run never started"
    run_pid = int(marker.read_text().split()[0])
    runner.kill()
    runner.wait()
    deadline = time.time() + 20
    alive = True
    while time.time() < deadline and alive:
        try:
            os.kill(run_pid, 0)
            time.sleep(0.2)
        except ProcessLookupError:
            alive = False
    if alive:
        os.killpg(runner.pid, signal.SIGKILL)
    assert not alive, "the run process outlived its runner"
    runs = store.runs_dir(out)
    assert not (runs.is_dir() and list(runs.glob("*.json"))), "an orphan wrote a row"


def test_prune_removes_only_runs_outside_the_profiles_grids(gfbench, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text("[run]\nseeds = 1\n[tasks.ou]\ndim = [1]\ntimes = [0.1]\n"
                       "[solvers.exact]\nn_samples = [256]\n")
    out = tmp_path / "r"
    assert gfbench("run", "--profile", profile, "--quiet", "--no-report", "--out", out,
                   "--metrics", "energy")[0] == 0
    # a run of another grid in the same directory (e.g. before a solver edit)
    assert gfbench("run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--seeds", "1",
                   "--solver", "exact", "-P", "exact.n_samples=128", "--metrics", "energy",
                   "--quiet", "--no-report", "--out", out)[0] == 0
    profile.write_text(profile.read_text().replace("[run]", "[run]\nmetrics = [\"energy\"]"))
    code, stdout, stderr = gfbench("prune", out, "--profile", profile)
    assert code == 0 and "1 of 2 run files" in stderr and "stale" in stdout
    assert len(list(store.runs_dir(out).glob("*.json"))) == 2  # listing deletes nothing
    code, _, _ = gfbench("prune", out, "--profile", profile, "--delete")
    assert code == 0
    frame = store.load(out)
    assert list(frame["solver.n_samples"]) == [256]


def test_sigterm_stops_the_runner_cleanly(tmp_path):
    """SIGTERM behaves like Ctrl-C: exit 130, a resume hint, no run left computing."""
    marker = tmp_path / "pid"
    args = [sys.executable, "-m", "cli", "run", "--task", "ou", "-P", "ou.dim=1",
            "--times", "0.1", "--seeds", "1", "--solver", "faulty_solvers:Slow",
            "-P", "faulty_solvers:Slow.delay=60", "--quiet", "--no-report",
            "--out", str(tmp_path / "t")]
    env = {**os.environ, "GFBENCH_TEST_PID_FILE": str(marker)}
    runner = subprocess.Popen(args, env=env, start_new_session=True, text=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not marker.exists():
        time.sleep(0.2)
    runner.send_signal(signal.SIGTERM)
    try:
        _, stderr = runner.communicate(timeout=30)
    finally:
        os.killpg(runner.pid, signal.SIGKILL) if runner.poll() is None else None
    assert runner.returncode == 130 and "rerun to resume" in stderr


def test_the_shared_reference_cache_changes_no_value_and_is_shared(tmp_path):
    from execution.execute import execute
    from execution.grid import GridBlock, RunConfig, expand

    specs = expand(RunConfig([GridBlock({"ou": {"dim": [3], "times": [0.5]}},
                                        {"em": {"n_particles": [300]}, "exact": {}})],
                             metrics=["energy", "symkl", "symkl_kde", "sliced_w2"]))
    plain = [execute(spec, {})[0] for spec in specs]
    cache = tmp_path / "cache"
    cache.mkdir()
    shared = [execute(spec, {"cache_dir": str(cache)})[0] for spec in specs]
    for a, b in zip(plain, shared):
        for name in ("energy", "energy_se", "symkl", "symkl_kde", "sliced_w2"):
            assert a.get(name) == b.get(name) or (np.isnan(a[name]) and np.isnan(b[name]))
    # the second solver read the first one's reference terms; the 16 MB projections stayed out
    files = list(cache.glob("*.npz"))
    assert 1 <= len(files) <= 3 and all(f.stat().st_size < 4 << 20 for f in files)


PROBE = '''
import os
import sys

with open(sys.argv[1], "a") as log:  # one line per process that runs this script
    log.write(f"{os.getpid()} {__name__}\\n")


def probe(queue):
    queue.put({"pid": os.getpid(), "sklearn": "sklearn.datasets" in sys.modules,
               "torch": "torch" in sys.modules, "blas": os.environ.get("OPENBLAS_NUM_THREADS")})


if __name__ == "__main__":
    from execution import parallel

    context = parallel._context(["tasks.ou", "solvers.exact"], n_threads=2)
    queue = context.Queue()
    child = context.Process(target=probe, args=(queue,))
    child.start()
    print(repr(queue.get()))
    child.join()
'''


def test_a_run_process_starts_with_the_grids_imports_done_and_its_threads_set(tmp_path):
    """What a run would import, the forkserver has: the task's lazy scikit-learn import,
    the runner's main script (so no run re-executes it), BLAS loaded for the runs' threads;
    torch, imported lazily by the task for torch solvers only, is left out."""
    script, log = tmp_path / "probe.py", tmp_path / "mains.log"
    script.write_text(PROBE)
    done = subprocess.run([sys.executable, str(script), str(log)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    seen = eval(done.stdout.strip().splitlines()[-1])  # noqa: S307 — our own probe's repr
    assert seen["sklearn"] and not seen["torch"] and seen["blas"] == "2"
    runners = dict(line.split()[::-1] for line in log.read_text().splitlines())
    # the runner itself, and its forkserver once; never the run process
    assert set(runners) == {"__main__", "__mp_main__"}
    assert int(runners["__mp_main__"]) != seen["pid"]
