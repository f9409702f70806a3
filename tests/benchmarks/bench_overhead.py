"""Per-run overhead of ``gfbench run``: the wall time a trivial run adds to a grid.

Run::

    python -m pytest tests/benchmarks/bench_overhead.py --benchmark-enable -s -p no:cacheprovider

and, to put the code of another commit beside this one (a checkout of it, e.g.
``git worktree add /tmp/before <commit>``)::

    GFBENCH_OVERHEAD_BASELINE=/tmp/before python -m pytest tests/benchmarks/bench_overhead.py \\
        --benchmark-enable -s -p no:cacheprovider

The command is issue 36's: ``gfbench run --task ou -P ou.dim=1 --solver exact
--times 0.5 -j 1`` (with its report), once with one seed and once with 21, and
the figure is the marginal wall time of a run, (T(21 runs) − T(1 run)) / 20,
from the medians of ``GFBENCH_OVERHEAD_ROUNDS`` rounds (default 3). Each side
runs ``python -m cli.main`` in its own tree, so that it imports its own code
(the run processes too: the forkserver imports from its working directory).
The sides and the two sizes are run in turn within each round (baseline 1,
current 1, baseline 21, current 21, ...), so the load of a shared machine
falls on both alike; the load average is recorded beside the figures, in
``extra_info``, and printed. Nothing is asserted about time; what is asserted
is that both sides' ``results.csv`` agree in every column but the timings,
the memory peak and the identity of the code that ran (commit, source hashes
and the run ids made from them).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
BASELINE_ENV = "GFBENCH_OVERHEAD_BASELINE"
ROUNDS = int(os.environ.get("GFBENCH_OVERHEAD_ROUNDS", "3"))
#: the grid sizes timed: one run, and the 21 whose difference gives 20 marginal runs
SEEDS = {1: "1", 21: "0..20"}
#: columns that differ between two runs of the same grid by design: when and how fast it
#: ran, how much memory it held, and which code ran it (the commit, a dirty tree, the
#: command's name, and the hashes of the task's and solver's sources, hence the run id)
VARYING = ("time_setup", "time_run", "time_eval", "peak_mem_mb", "finished_at",
           "git_sha", "git_dirty", "argv0", "run_id", "task_code", "solver_code")


def _gfbench_run(tree: Path, out: Path, runs: int) -> float:
    """Wall seconds of the issue's command with ``runs`` seeds, run from ``tree``."""
    command = [sys.executable, "-m", "cli.main", "run", "--task", "ou", "-P", "ou.dim=1",
               "--solver", "exact", "--times", "0.5", "--seeds", SEEDS[runs], "-j", "1",
               "--quiet", "--out", str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=tree, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return elapsed


def _comparable(out: Path) -> pd.DataFrame:
    """``results.csv`` without the columns that vary by design, in (seed, t) order."""
    frame = pd.read_csv(out / "results.csv")
    frame = frame.drop(columns=[c for c in VARYING if c in frame.columns])
    return frame.sort_values(["seed", "t"]).reset_index(drop=True)


def test_marginal_wall_time_per_run(benchmark, tmp_path):
    sides = {"current": ROOT}
    if os.environ.get(BASELINE_ENV):
        sides = {"baseline": Path(os.environ[BASELINE_ENV]).resolve(), **sides}
    times: dict[tuple[str, int], list[float]] = {(s, n): [] for s in sides for n in SEEDS}
    loads = [os.getloadavg()[0]]

    def one_round() -> None:
        for runs in SEEDS:
            for side, tree in sides.items():
                # a fresh directory each time: a rerun would resume, and run nothing
                out = tmp_path / f"{side}-{runs}-{len(times[side, runs])}"
                times[side, runs].append(_gfbench_run(tree, out, runs))
        loads.append(os.getloadavg()[0])

    benchmark.group = "gfbench run: marginal wall time per trivial run at -j 1"
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)

    lines = []
    for side in sides:
        one, many = (statistics.median(times[side, n]) for n in SEEDS)
        marginal = (many - one) / 20
        benchmark.extra_info[f"{side}_T1_s"] = one
        benchmark.extra_info[f"{side}_T21_s"] = many
        benchmark.extra_info[f"{side}_marginal_s"] = marginal
        lines.append(f"{side}: T(1) {one:.2f} s, T(21) {many:.2f} s, "
                     f"marginal {marginal:.3f} s per run")
    if "baseline" in sides:
        ratio = benchmark.extra_info["baseline_marginal_s"] / \
            benchmark.extra_info["current_marginal_s"]
        benchmark.extra_info["marginal_ratio"] = ratio
        lines.append(f"the current marginal run is {ratio:.1f}x cheaper than the baseline's")
    benchmark.extra_info["load_average_1min"] = loads
    lines.append(f"1-minute load average over the rounds: "
                 + ", ".join(f"{x:.2f}" for x in loads) + f" ({os.cpu_count()} cores)")
    print("\n" + "\n".join(lines))

    if "baseline" in sides:
        # the same rows on both sides: what changed is how runs start, never what they compute
        for runs in SEEDS:
            pd.testing.assert_frame_equal(_comparable(tmp_path / f"baseline-{runs}-0"),
                                          _comparable(tmp_path / f"current-{runs}-0"))
