"""The ``gfbench`` command line.

Exit codes: 0 every run ok or skipped; 1 some run failed (error / timeout /
diverged) or ``compare`` found a regression; 2 bad input (nothing written) or
an environment that cannot be written to (a full disk, a read-only
directory: runs finished before are kept); 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

from runners.grid import BadInput, GridBlock, RunConfig, expand, parse_seeds, parse_values

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


def _build_parser() -> argparse.ArgumentParser:
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
                          "run nothing")
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
                                       "the runs no given profile produces any more. Only "
                                       "files that parse as run files are touched.",
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


# ---------------------------------------------------------------- run ------
def _apply_params(config: RunConfig, params: list[str]) -> None:
    for item in params:
        name, eq, values = item.partition("=")
        owner, dot, key = name.rpartition(".")
        if not eq or not dot or not owner or not key:
            raise BadInput(f"bad --param {item!r}: expected NAME.KEY=V1,V2")
        hit = False
        for block in config.blocks:
            for table in (block.tasks, block.solvers):
                if owner in table:
                    table[owner][key] = parse_values(values)
                    hit = True
        if not hit:
            raise BadInput(f"--param {item!r}: {owner!r} is not a selected task or solver")


def _select(config: RunConfig, tasks: list[str], solvers: list[str]) -> None:
    """Restrict a profile's blocks to the named tasks/solvers."""
    for names, attr in ((tasks, "tasks"), (solvers, "solvers")):
        if not names:
            continue
        present = {n for b in config.blocks for n in getattr(b, attr)}
        missing = [n for n in names if n not in present]
        if missing:
            raise BadInput(f"{attr[:-1]}(s) {missing} not in the profile; it has {sorted(present)}")
        for block in config.blocks:
            setattr(block, attr, {k: v for k, v in getattr(block, attr).items() if k in names})
    config.blocks = [b for b in config.blocks if b.tasks and b.solvers]


def _config_from_args(args) -> RunConfig:
    from runners import registry
    from runners.profiles import read_profile, to_config

    if args.profile:
        config = to_config(read_profile(args.profile))
        _select(config, args.task, args.solver)
    else:
        if not args.task:
            raise BadInput("name at least one --task (or use --profile); see 'gfbench list'")
        solvers = args.solver or list(registry.index()["solvers"])
        config = RunConfig(blocks=[GridBlock({t: {} for t in args.task}, {s: {} for s in solvers})])
    _apply_params(config, args.param)
    if args.times:
        times = parse_values(args.times)
        for block in config.blocks:
            for grid in block.tasks.values():
                grid["times"] = times
    if args.seeds:
        config.seeds = parse_seeds(args.seeds)
        for block in config.blocks:
            block.seeds = None
    if args.metrics:
        config.metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.max_memory is not None:
        config.max_memory = parse_size(args.max_memory)
    for attr, value in (("n_jobs", args.jobs), ("timeout", args.timeout), ("device", args.device),
                        ("backend", args.backend), ("scheduler", args.scheduler),
                        ("n_threads", args.threads)):
        if value is not None:
            setattr(config, attr, value)
    if args.no_retry:
        config.retry_failed = False
    _validate_run_options(config)
    return config


def parse_size(text: str | int) -> int:
    """``4G``, ``512M``, ``1.5GB`` or a number of bytes -> bytes (BadInput otherwise)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1] if raw and raw[-1] in units else ""
    try:
        value = float(raw[:-1] if unit else raw) * units[unit]
    except ValueError:
        raise BadInput(f"bad memory size {text!r}: expected e.g. 4G, 512M or bytes") from None
    if not value >= 2**27 or value != value or value > 2**50:
        raise BadInput(f"memory size {text!r} must be at least 128M")
    return int(value)


def _validate_run_options(config: RunConfig) -> None:
    if config.n_jobs is None or config.n_jobs < 1:
        raise BadInput(f"-j/--jobs must be >= 1, got {config.n_jobs}")
    if config.timeout is not None and not config.timeout > 0:
        raise BadInput(f"--timeout must be > 0, got {config.timeout}")
    if config.n_threads is not None and config.n_threads < 1:
        raise BadInput(f"--threads must be >= 1, got {config.n_threads}")
    if config.device not in ("cpu", "cuda"):
        raise BadInput(f"device must be cpu or cuda, got {config.device!r}")
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise BadInput("--device cuda was asked for but torch sees no CUDA device on this "
                           "host")
    if config.backend not in ("loky", "dask", "ray"):
        raise BadInput(f"backend must be loky, dask or ray, got {config.backend!r}")
    if config.backend == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise BadInput("--backend ray needs the optional extra: pip install 'gfbench[ray]'") \
                from None
    if config.backend == "dask":
        try:
            import dask.distributed  # noqa: F401
        except ImportError:
            raise BadInput("--backend dask needs: pip install 'gfbench[dask]'") from None
    if config.scheduler and config.backend != "dask":
        raise BadInput("--scheduler is for --backend dask")
    _check_max_memory(config)


def _check_max_memory(config: RunConfig) -> None:
    """A memory limit beyond this machine's memory is no limit: refused for local runs.

    (A Dask or Ray cluster's workers run elsewhere, on machines of their own size.)
    """
    from runners.resources import total_memory_bytes

    total = total_memory_bytes()
    if config.max_memory and config.backend == "loky" and config.max_memory > total:
        raise BadInput(f"the memory limit of a run (--max-memory, or the profile's "
                       f"max_memory), {config.max_memory / 2**30:.1f} GB, is more than this "
                       f"machine's {total / 2**30:.1f} GB of physical memory: a run would "
                       "exhaust the machine before reaching it")


def check_writable(out: Path, files: tuple[str, ...] = ()) -> None:
    """Fail with :class:`BadInput` unless ``out`` can be created and written.

    ``files`` are paths inside ``out`` (``runs``, ``results.csv`` ...) that must
    not be something else already (a file where a directory goes, or the reverse).
    """
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise BadInput(f"results directory {str(out)!r} exists and is not a directory")
    for name in files:
        path = out / name
        want_dir = "." not in name
        if path.exists() and path.is_dir() != want_dir:
            raise BadInput(f"{str(path)!r} exists and is not a "
                           f"{'directory' if want_dir else 'file'}")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BadInput(f"cannot create results directory {str(out)!r}: {str(probe)!r} is a file")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".gfbench-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise BadInput(f"results directory {str(out)!r} is not writable: "
                       f"{exc.strerror or exc}") from None


RESULT_FILES = ("runs", "results.csv", "results.parquet", "timings.csv")


def _check_scheduler(address: str) -> None:
    """Connect to a Dask scheduler once, before anything is written (BadInput if it fails)."""
    from dask.distributed import Client

    try:
        Client(address, timeout=3).close()
    except (OSError, TimeoutError) as exc:
        raise BadInput(f"cannot reach the Dask scheduler at {address}: "
                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _confirm_long_grid(estimate, n_jobs: int, yes: bool) -> None:
    """Above one hour: ask on a terminal (unless --yes); elsewhere say it and go on."""
    from runners.estimate import format_duration

    wall = estimate.wall(n_jobs)
    if wall <= 3600 or yes:
        return
    line = (f"gfbench: this grid is estimated at {format_duration(wall)} at -j {n_jobs} "
            f"({estimate.runs} runs" + (f", {estimate.unknown} of unknown time)" if
                                        estimate.unknown else ")"))
    print(line, file=sys.stderr)
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return
    try:
        answer = input("Run it? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise BadInput("not confirmed (pass --yes to run long grids without asking)")


def cmd_run(args) -> int:
    from runners import parallel, resources, store
    from runners.estimate import estimate_specs
    from runners.grid import count_runs
    from runners.provenance import provenance

    config = _config_from_args(args)
    if args.dry_run and args.verbose and count_runs(config) > 10_000:
        print(f"{count_runs(config):,} runs (not listed one by one above 10,000)")
    specs = expand(config)
    if not specs:
        raise BadInput("the selection is empty: no (task, solver) pair to run")
    if not args.profile and not args.solver:
        print(f"gfbench: no --solver given: every solver ({len(config.blocks[0].solvers)}); "
              "those that cannot run a task give 'skipped' rows", file=sys.stderr)
    if not args.dry_run and config.backend == "loky" and config.n_jobs == 1:
        parallel.warm_up(parallel.preload_modules(specs))  # imports overlap what follows
    estimate = estimate_specs(specs)
    if args.dry_run:
        # the answer first (runs and time per solver, on what basis); the list on request
        print("\n".join(estimate.lines(config.n_jobs, n_threads=config.n_threads or 1)))
        if args.verbose and len(specs) <= 10_000:
            for spec in specs:
                print(spec["run_id"], spec["task"], spec["task_params"], spec["solver"],
                      spec["solver_params"], "seed", spec["seed"], "t", spec["times"])
        return EXIT_OK
    out = Path(args.out or DEFAULT_OUT)
    check_writable(out, RESULT_FILES)
    if config.backend == "dask" and config.scheduler:
        _check_scheduler(config.scheduler)
    _confirm_long_grid(estimate, config.n_jobs, args.yes)
    store.runs_dir(out).mkdir(parents=True, exist_ok=True)
    store.clean_stale_temp(out)

    todo, corrupt = parallel.pending(specs, out, config.retry_failed)
    for path in corrupt:
        print(f"gfbench: warning: corrupt run file {path} will be redone", file=sys.stderr)
    n_jobs, why = resources.cap_jobs(config.n_jobs, len(todo), config.max_memory) \
        if config.backend == "loky" else (config.n_jobs, "")
    if why:
        print(f"gfbench: {why}", file=sys.stderr)
    # the default limit shares the machine among the runs that actually run at once
    max_memory = config.max_memory or resources.default_max_memory(n_jobs)
    n_threads = config.n_threads or 1
    options = {"timeout": config.timeout, "n_threads": n_threads, "device": config.device,
               "n_gpus": _cuda_count() if config.device == "cuda" else 0,
               "max_memory": max_memory, "provenance": provenance(config.device),
               "preload": parallel.preload_modules(specs)}
    print(f"gfbench: {len(specs)} runs, {len(specs) - len(todo)} already done, "
          f"{len(todo)} to run with -j {n_jobs} ({n_threads} thread{'s' * (n_threads > 1)} "
          f"and at most {max_memory / 2**30:.1f} GB of memory each) -> {out}", file=sys.stderr)
    try:
        parallel.dispatch(todo, out, options, n_jobs=n_jobs, backend=config.backend,
                          scheduler=config.scheduler, show_progress=not args.quiet)
        frame = store.export(out)
    except OSError as exc:  # a full disk, a directory made read-only: not a failed run
        raise BadInput(f"{describe_os_error(exc)}; the runs finished before are kept "
                       "(rerun the same command to resume)") from None
    ids = {s["run_id"] for s in specs}
    selected = frame[frame["run_id"].isin(ids)] if not frame.empty else frame
    statuses = selected.groupby("run_id")["status"].agg(lambda s: _worst(set(s))) \
        if not selected.empty else None
    status_counts = statuses.value_counts().to_dict() if statuses is not None else {}
    missing = len(ids) - (len(statuses) if statuses is not None else 0)
    if missing > 0:
        status_counts["missing"] = missing
    print("gfbench: runs by status: " + ", ".join(f"{k} {v}" for k, v in
                                                  sorted(status_counts.items())),
          file=sys.stderr)
    failures = {k: v for k, v in sorted(status_counts.items()) if k not in ("ok", "skipped")}
    if failures:
        print(f"gfbench: {sum(failures.values())} of {len(ids)} runs failed ("
              + ", ".join(f"{k} {v}" for k, v in failures.items())
              + f"); each one's reason is in the 'error' column of {out / 'results.csv'}",
              file=sys.stderr)
    if not args.no_report:
        try:
            paths = publish_report([out], out / "report")
        except OSError as exc:
            raise BadInput(f"cannot write the report: {describe_os_error(exc)}; the runs and "
                           "results.csv are written") from None
        print(f"gfbench: report -> {paths['markdown']} and {paths['html']}", file=sys.stderr)
    failed = sum(v for k, v in status_counts.items() if k not in ("ok", "skipped"))
    return EXIT_FAILED if failed else EXIT_OK


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


def _worst(statuses: set[str]) -> str:
    for status in ("error", "timeout", "oom", "diverged"):
        if status in statuses:
            return status
    return "skipped" if statuses == {"skipped"} else "ok"


# ---------------------------------------------------------------- other ----
def cmd_list(args) -> int:
    from runners import registry
    from runners.estimate import basis, estimate_profile, load_timings, timing_files
    from runners.profiles import builtin_profiles, read_profile

    index = registry.index()
    print("TASKS")
    for name, task in index["tasks"].items():
        grid = ", ".join(f"{k}={_short(v)}" for k, v in task["parameters"].items())
        bounds = "; ".join(f"{k} in [{lo:g}, {hi:g}]" for k, (lo, hi) in task["bounds"].items())
        print(f"  {name:18s} v{task['version']}  {task['description']}\n{'':22s}params: {grid}; "
              f"times: {_short(task['default_times'])}" + (f"; {bounds}" if bounds else "")
              + f"\n{'':22s}ranked by: {', '.join(task['rankings'])}")
    print("SOLVERS")
    for name, solver in index["solvers"].items():
        grid = ", ".join(f"{k}={_short(v)}" for k, v in solver["parameters"].items())
        caps = ",".join(solver["capabilities"])
        print(f"  {name:18s} v{solver['version']}  [{caps}] {solver['description']}\n"
              f"{'':22s}params: {grid}")
    print("METRICS (* computed by default; the others when a profile or --metrics asks)")
    for name, metric in index["metrics"].items():
        mark = "*" if metric["default"] else " "
        print(f"{mark} {name:18s} v{metric['version']}  {metric['description']}")
    print("PROFILES (estimated wall time on an idle machine; "
          f"{basis(timing_files())})")
    timings = load_timings()
    for name, path in builtin_profiles().items():
        data = read_profile(str(path))
        jobs = int((data.get("run", {}) or {}).get("n_jobs", 1))
        estimate = estimate_profile(data, index, timings)
        print(f"  {name:18s} {estimate.runs} runs, {estimate.summary(jobs)}\n"
              f"{'':22s}{data.get('description', '')}")
    return EXIT_OK


def _short(values: list) -> str:
    if len(values) > 6:
        return f"[{values[0]}, {values[1]}, ..., {values[-1]}] ({len(values)})"
    return str(values)


def _require_results(paths: list[str]) -> list[Path]:
    from runners import store

    out = []
    for p in paths:
        path = Path(p)
        if not store.runs_dir(path).is_dir():
            raise BadInput(f"{p!r} is not a gfbench results directory (no runs/ inside)")
        out.append(path)
    return out


def _load_and_warn(dirs: list[Path]):
    """Rows of ``dirs``; unreadable run files are counted and named on stderr."""
    from runners import store

    frame, corrupt, stale = store.load_current(dirs)
    if corrupt:
        print(f"gfbench: warning: {len(corrupt)} unreadable run file(s) (corrupt, partial or "
              "foreign) left out: " + ", ".join(map(str, corrupt)), file=sys.stderr)
    if stale:
        print(f"gfbench: {len(stale)} run file(s) of older code generations left out "
              "(`gfbench prune` lists them)", file=sys.stderr)
    return frame, corrupt


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what, on which file, why."""
    from runners.store import StoreError

    if isinstance(exc, StoreError):
        return str(exc)  # already says what could not be written, and why
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot write or read{where}: {exc.strerror or exc}"


#: what a report consists of, swapped in together by :func:`publish_report`
REPORT_PARTS = ("figures", "report.html", "report.md")


def publish_report(dirs: list[Path], out: Path, **kwargs) -> dict:
    """``write_report`` into a staging directory inside ``out``, then swap it in.

    An interrupted (Ctrl-C, SIGTERM) or failed report — a full disk — leaves
    the previous one whole: its markdown, HTML and figures always belong
    together. The swap itself is three renames with the interrupts held.
    Returns the paths of the report in ``out``.
    """
    import shutil

    from runners.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    _drop_dead_staging(out)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=f".staging.{os.getpid()}.", suffix=".tmp"))
    try:
        paths = write_report(dirs, staging, **kwargs)
        with _interrupts_held():
            _swap_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"markdown": out / "report.md", "html": out / "report.html",
            "figures": [out / "figures" / Path(p).name for p in paths.get("figures", [])]}


@contextlib.contextmanager
def _interrupts_held():
    """Ctrl-C and SIGTERM wait until the block is done, then interrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals (and sets their handlers)
        return
    caught: list[int] = []
    saved = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
             for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    if caught:
        raise KeyboardInterrupt


def _swap_in(staging: Path, out: Path) -> None:
    """Move the staged report's parts over ``out``'s (the old figures go with the staging)."""
    old_figures = out / "figures"
    if old_figures.is_dir() and not old_figures.is_symlink():
        os.replace(old_figures, staging / ".old-figures")
    for part in REPORT_PARTS:
        os.replace(staging / part, out / part)


def _drop_dead_staging(out: Path) -> None:
    """Staging directories of reports whose writer was killed (kill -9)."""
    import shutil

    from runners.store import _pid_alive

    for path in out.glob(".staging.*.tmp"):
        pid = path.name.split(".")[2]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def cmd_report(args) -> int:
    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0] / "report"
    check_writable(out)
    frame, corrupt = _load_and_warn(dirs)
    from runners import store

    store.clean_stale_temp(out)
    try:
        paths = publish_report(dirs, out, frame=frame, corrupt=corrupt)
    except OSError as exc:
        raise BadInput(f"cannot write the report: {describe_os_error(exc)}; the previous "
                       "report, if any, is left as it was") from None
    print(f"gfbench: report -> {paths['markdown']} and {paths['html']}")
    return EXIT_OK


def cmd_prune(args) -> int:
    from runners import store
    from runners.profiles import read_profile, to_config

    (out,) = _require_results([args.results])
    valid, corrupt = store.scan(out)
    _, generations = store.split_generations(valid)
    stale = {run_id: "older code generation of a rerun experiment" for run_id in generations}
    if args.profile:
        keep = {spec["run_id"] for name in args.profile
                for spec in expand(to_config(read_profile(name)))}
        stale.update({run_id: f"in no grid of {', '.join(args.profile)}"
                      for run_id in valid if run_id not in keep and run_id not in stale})
    # only files that parse as gfbench run files are ever touched: a user's notes.json,
    # a corrupt file or a directory in runs/ is left alone
    for run_id, why in sorted(stale.items()):
        path = store.runs_dir(out) / f"{run_id}.json"
        print(f"{'deleted' if args.delete else 'stale'} {path} ({why})")
        if args.delete:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
    if args.delete and stale:
        store.export(out)
    print(f"gfbench: {len(stale)} of {len(valid)} run files are stale"
          + (f"; {len(corrupt)} unreadable file(s) left alone" if corrupt else "")
          + ("" if args.delete or not stale else " (rerun with --delete to remove them)"),
          file=sys.stderr)
    return EXIT_OK


def cmd_leaderboard(args) -> int:
    from runners.leaderboard import write_leaderboard

    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0]
    check_writable(out)
    from runners import registry

    known = registry.index()["metrics"]
    if args.metric and args.metric not in known:
        raise BadInput(f"unknown metric {args.metric!r}; known: {', '.join(known)}")
    frame, _ = _load_and_warn(dirs)
    if args.metric:
        from runners.aggregate import metric_columns

        if args.metric not in metric_columns(frame):
            raise BadInput(f"no run in {', '.join(map(str, dirs))} has values of metric "
                           f"{args.metric!r}")
    paths = write_leaderboard(dirs, out, metric=args.metric, frame=frame)
    print(f"gfbench: leaderboard -> {paths['markdown']} and {paths['csv']}")
    return EXIT_OK


def cmd_compare(args) -> int:
    import math

    from runners.compare import NothingCompared, compare_dirs

    if args.rtol is not None and not (math.isfinite(args.rtol) and args.rtol >= 0):
        raise BadInput(f"--rtol must be a finite number >= 0, got {args.rtol}")
    base, new = _require_results([args.baseline, args.new])
    if args.out:
        check_writable(Path(args.out).parent)
    try:
        failures = compare_dirs(base, new, rtol=args.rtol,
                                out=Path(args.out) if args.out else None,
                                allow_missing=args.allow_missing)
    except NothingCompared as exc:
        raise BadInput(f"nothing compared: {exc}") from None
    return EXIT_FAILED if failures else EXIT_OK


COMMANDS = {"run": cmd_run, "list": cmd_list, "report": cmd_report,
            "leaderboard": cmd_leaderboard, "compare": cmd_compare, "prune": cmd_prune}


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


#: what an interrupted command leaves behind, in its final line
INTERRUPTED = {"run": "finished runs are kept, rerun to resume",
               "report": "the previous report, if any, is left as it was"}


def main(argv: list[str] | None = None) -> int:
    """Run one ``gfbench`` command; returns the exit code.

    Exit 2 covers the environment too: a file that cannot be written (a full
    disk, a read-only directory) is one line, never a traceback, and never
    the 1 that means failed runs or a regression.
    """
    command = None
    try:
        parser = _build_parser()
        args = parser.parse_args(argv)
        command = args.command
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_BAD_INPUT
        return COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"gfbench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # StoreError included
        print(f"gfbench: error: {describe_os_error(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"gfbench: interrupted; {INTERRUPTED.get(command, 'nothing was half-written')}",
              file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``gfbench`` console script.

    SIGTERM (a scheduler's stop, ``kill``) ends like Ctrl-C: clean-up runs,
    finished runs are kept, and the message says how to resume. SIGINT
    interrupts even where it was inherited ignored (a background job of a
    script): a ``kill -INT`` is never swallowed.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
