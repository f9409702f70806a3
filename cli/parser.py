"""The ``gfbench`` command line's interface: its options, help texts, defaults and exit codes.

Exit codes: 0 every run ok or skipped; 1 some run failed (error / timeout /
diverged) or ``compare`` found a regression; 2 bad input (nothing written) or
an environment that cannot be written to (a full disk, a read-only
directory: runs finished before are kept); 130 interrupted.

Only argparse lives here. What each command does is in :mod:`cli.run` and
:mod:`cli.commands`, which import the heavy parts (pandas, the executor, the
report) inside the command that needs them, so that ``gfbench --help`` and a
usage error stay fast; the dispatch is in :mod:`cli.main`.
"""
from __future__ import annotations

import argparse

from execution.grid import BadInput

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_OUT = "gfbench-results"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.split()[-1]
        where = "gfbench --help" if command == "gfbench" else f"gfbench {command} --help"
        raise BadInput(f"{message} (see '{where}')")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Wider help, descriptions and epilogs printed as written."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)


MAIN_EPILOG = """examples:
  gfbench run --profile quick --out gfbench-results
  gfbench run --task ou --solver em --solver exact -P ou.dim=1..4 --seeds 3
  gfbench leaderboard gfbench-results
  gfbench compare results/baseline-smoke gfbench-results

exit codes: 0 ok; 1 some run failed, or compare found a regression; 2 bad input, or a
file that cannot be written (full disk, read-only directory): one line on stderr, nothing
half-written. 'gfbench COMMAND --help' for each command."""


RUN_DESCRIPTION = """Run every (task configuration, solver configuration, seed) of a grid, each run in
its own process under hard limits, and write one file per run, results.csv/.parquet and a
report into the results directory. Rerunning the same command resumes: finished runs are
kept, failed ones retried. The grid comes from --profile or from --task/--solver/-P; with
--task and no --solver every solver is selected (those that cannot run the task give
'skipped' rows) -- check with --dry-run, which prints the runs per solver and an estimate of
the wall time from the committed results' timings."""


RUN_EPILOG = """examples:
  gfbench run --profile quick --out gfbench-results            # the README's default run
  gfbench run --task ou --solver em --solver exact -P ou.dim=1..4 \\
              -P em.n_particles=1000,10000 --times 0.5,0.9 --seeds 3 -j 2 --out my-results
  gfbench run --profile standard --dry-run                     # what it runs, how long

long grids: a grid estimated above one hour asks for confirmation on a terminal unless
--yes is given; without a terminal (scripts, CI, nohup) it prints the estimate and proceeds.
limits: -j is capped at the runs to do, the cores and the memory (--max-memory each); a run
past --timeout or --max-memory is killed with its whole process tree (status timeout / oom)."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gfbench", formatter_class=_Help, epilog=MAIN_EPILOG,
                     description="gfbench: a benchmark of solvers for Wasserstein gradient flows "
                                 "(Fokker-Planck equations).")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    sub.add_parser("list", help="tasks, solvers, metrics and profiles", formatter_class=_Help,
                   description="List the tasks, solvers (capabilities, default parameter grids), "
                               "metrics (default ones marked *) and built-in profiles with "
                               "their estimated wall time on 2 cores.")

    run = sub.add_parser("run", help="run a grid of (task, solver, seed)", formatter_class=_Help,
                         description=RUN_DESCRIPTION, epilog=RUN_EPILOG)
    grid = run.add_argument_group("what to run")
    grid.add_argument("--profile", help="built-in profile (see 'gfbench list') or a TOML/YAML "
                                        "file; --task/--solver then select within it")
    grid.add_argument("--task", action="append", default=[], help="task name (repeatable)")
    grid.add_argument("--solver", action="append", default=[],
                      help="solver name or plugin path module:Class (repeatable; default: all)")
    grid.add_argument("--param", "-P", action="append", default=[], metavar="NAME.KEY=V1,V2",
                      help="parameter grid of a task or solver: ou.dim=1..4, em.n_particles=1000")
    grid.add_argument("--times", help="evaluation times, e.g. 0.5,0.9 (default: each task's)")
    grid.add_argument("--seeds", help="N (seeds 0..N-1), a list 0,3 or a range 0..4 "
                                      "(default: the profile's, else 1)")
    grid.add_argument("--metrics", help="comma-separated metric names (default: the metrics "
                                        "marked * in 'gfbench list', or the profile's)")
    how = run.add_argument_group("how to run it")
    how.add_argument("-j", "--jobs", type=int, help="parallel runs (default: the profile's, "
                                                   "else 1; capped, see below)")
    how.add_argument("--threads", type=int,
                     help="threads per run (default 1: measured fastest on this 2-core machine, "
                          "idle and busy alike; see the README)")
    how.add_argument("--timeout", type=float, help="seconds a run may take before it is killed "
                                                   "(default: the profile's, else none)")
    how.add_argument("--max-memory", metavar="SIZE",
                     help="resident memory a run (with every process it starts) may use, e.g. "
                          "4G or 512M; at most the machine's memory (default: 80%% of it "
                          "divided by the -j used after capping)")
    how.add_argument("--device", choices=["cpu", "cuda"],
                     help="device for GPU-capable solvers (default cpu)")
    how.add_argument("--backend", choices=["loky", "dask", "ray"],
                     help="parallel backend (default loky: local processes; ray: the cluster "
                          "RAY_ADDRESS names or a running local one, else a new local instance)")
    how.add_argument("--scheduler", help="Dask scheduler address (with --backend dask)")
    out = run.add_argument_group("output")
    out.add_argument("--out", default=None, help=f"results directory (default {DEFAULT_OUT})")
    out.add_argument("--no-retry", action="store_true",
                     help="keep failed runs on resume instead of retrying them")
    out.add_argument("--no-report", action="store_true", help="do not write the report")
    out.add_argument("--dry-run", action="store_true",
                     help="print the runs per solver and the estimated time (and its basis), "
                          "run nothing; with the --out of an earlier run, only what is left")
    out.add_argument("--verbose", "-v", action="store_true",
                     help="with --dry-run, also list every run (id, task, solver, seed, times)")
    out.add_argument("--yes", "-y", action="store_true",
                     help="do not ask before a grid estimated above one hour")
    out.add_argument("--quiet", action="store_true", help="no progress output")

    report = sub.add_parser("report", help="tables and figures from results directories",
                            formatter_class=_Help,
                            description="Write report.md, a self-contained report.html and "
                                        "figures/ from one or several results directories.",
                            epilog="example:\n  gfbench report results/standard")
    report.add_argument("results", nargs="+", help="results directory (several are merged)")
    report.add_argument("--out", help="report directory (default RESULTS/report)")

    board = sub.add_parser("leaderboard", help="rank solvers per task, metric and group",
                           formatter_class=_Help,
                           description="Rank solver configurations per task, ranking metric and "
                                       "dimension / data set, with ties where the difference is "
                                       "within noise; write leaderboard.md and leaderboard.csv.",
                           epilog="example:\n  gfbench leaderboard results/standard --out results")
    board.add_argument("results", nargs="+", help="results directory (several are merged)")
    board.add_argument("--out", help="directory for leaderboard.md/.csv (default RESULTS)")
    board.add_argument("--metric", help="rank every task by this metric instead of its own")

    prune = sub.add_parser("prune", help="list (or --delete) stale run files: older code "
                                         "generations, and with --profile runs of no given grid",
                           formatter_class=_Help,
                           description="A run id hashes the code that produced it, so an edit "
                                       "followed by a rerun leaves the older generation's run "
                                       "files beside the new ones (readers already ignore "
                                       "them); list or delete them, and with --profile also "
                                       "the runs of experiments (task and solver "
                                       "configuration, seed) no given profile produces any "
                                       "more; a run of older code that a profile still "
                                       "produces is kept until it is rerun. Only files that "
                                       "parse as run files are touched.",
                           epilog="example:\n  gfbench prune results/standard --profile "
                                  "standard --profile blr --delete")
    prune.add_argument("results", help="results directory")
    prune.add_argument("--profile", action="append",
                       help="a profile whose runs are kept (repeatable); without it only older "
                            "generations are stale")
    prune.add_argument("--delete", action="store_true",
                       help="delete the stale files and re-export results.csv/.parquet")

    compare = sub.add_parser(
        "compare", help="regression check of NEW against BASELINE", formatter_class=_Help,
        description="Regression gate: match configurations (task, task config, solver, solver "
                    "config, t), pair runs over seeds, and judge every metric.",
        epilog="""verdicts:
  same             every paired difference within tolerance (rtol, atol) or 3 standard errors
  better / worse   every difference beyond both, one direction (Wilcoxon with >= 6 seeds);
                   a finite value that became infinite is worse
  not significant  beyond tolerance, not consistently
  new failure      ok in the baseline; failed, no longer computed or invalid now
  fixed            the reverse
  not comparable   task, solver or metric version changed
  missing / new    configuration in the baseline only / in the new results only
  only worse, new failure and missing (unless --allow-missing) fail the gate

run-time verdicts (metric time_run; reported, never gating):
  slower / faster  new median run time > 1.5x the baseline's + 0.05 s / the reverse
                   (only runs with the same machine_id are timed against each other)
  same             within that ratio
  not comparable   the runs were timed on different machines

exit codes:
  0  something was compared and nothing regressed
  1  worse, new failure, missing (unless --allow-missing), or corrupt run files
  2  bad input, nothing to compare (no shared configuration, no comparable metric), or
     --out cannot be written (full disk, read-only directory): never read as a regression

example:
  gfbench compare results/baseline-smoke my-results --out comparison.csv""")
    compare.add_argument("baseline", help="results directory of the reference run")
    compare.add_argument("new", help="results directory to judge")
    compare.add_argument("--rtol", type=float, default=None,
                         help="relative tolerance for every metric (default: per metric)")
    compare.add_argument("--allow-missing", action="store_true",
                         help="do not fail when baseline configurations are absent from NEW")
    compare.add_argument("--out", help="write the comparison table (CSV) here")
    return parser
