"""The ``gfbench`` command line.

Exit codes: 0 every run ok or skipped; 1 some run failed (error / timeout /
diverged) or ``compare`` found a regression; 2 bad input (nothing written).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from runners.grid import BadInput, GridBlock, RunConfig, expand, parse_seeds, parse_values

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_OUT = "gfbench-results"


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad usage as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadInput(f"{message} (see 'gfbench {self.prog.split()[-1]} --help')")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gfbench", description="Benchmark of Wasserstein gradient flow solvers")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("list", help="tasks, solvers, metrics and profiles")

    run = sub.add_parser("run", help="run a grid of (task, solver, seed)")
    run.add_argument("--profile", help="built-in profile name or a TOML/YAML file")
    run.add_argument("--task", action="append", default=[], help="task name (repeatable)")
    run.add_argument("--solver", action="append", default=[], help="solver name (repeatable)")
    run.add_argument("--param", "-P", action="append", default=[], metavar="NAME.KEY=V1,V2",
                     help="parameter grid of a task or solver, e.g. ou.dim=1..4, em.n_particles=1000")
    run.add_argument("--times", help="evaluation times, e.g. 0.5,0.9 (all selected tasks)")
    run.add_argument("--seeds", help="N (seeds 0..N-1), a list 0,3 or a range 0..4")
    run.add_argument("--metrics", help="comma-separated metric names (default: all)")
    run.add_argument("-j", "--jobs", type=int, help="parallel runs (default 1)")
    run.add_argument("--timeout", type=float, help="hard time limit per run, seconds")
    run.add_argument("--threads", type=int, help="threads per run (default cores / jobs)")
    run.add_argument("--device", choices=["cpu", "cuda"], help="device for GPU-capable solvers")
    run.add_argument("--backend", choices=["loky", "dask", "ray"], help="parallel backend")
    run.add_argument("--scheduler", help="Dask scheduler address (with --backend dask)")
    run.add_argument("--out", default=None, help=f"results directory (default {DEFAULT_OUT})")
    run.add_argument("--no-retry", action="store_true", help="do not rerun failed runs on resume")
    run.add_argument("--no-report", action="store_true", help="skip writing the report")
    run.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    run.add_argument("--quiet", action="store_true", help="no progress bar")

    report = sub.add_parser("report", help="tables and figures from a results directory")
    report.add_argument("results", nargs="+", help="results directory (several are merged)")
    report.add_argument("--out", help="report directory (default RESULTS/report)")

    board = sub.add_parser("leaderboard", help="rank solvers per (task, dim)")
    board.add_argument("results", nargs="+")
    board.add_argument("--out", help="directory for leaderboard.md/.csv (default RESULTS)")
    board.add_argument("--metric", help="rank by this metric instead of each task's primary one")

    prune = sub.add_parser("prune", help="list (or --delete) run files that belong to none "
                                         "of the given profiles' grids (stale after code edits)")
    prune.add_argument("results", help="results directory")
    prune.add_argument("--profile", action="append", required=True,
                       help="a profile whose runs are kept (repeatable)")
    prune.add_argument("--delete", action="store_true",
                       help="delete the stale files and re-export results.csv/.parquet")

    compare = sub.add_parser(
        "compare", help="regression check of NEW against BASELINE",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Regression gate: match configurations (task, task config, solver, solver "
                    "config, t), pair runs over seeds, and judge every metric.",
        epilog="""verdicts:
  same             every paired difference within tolerance (rtol, atol) or 3 standard errors
  better / worse   every difference beyond both, one direction (Wilcoxon with >= 6 seeds);
                   a finite value that became infinite is worse
  not significant  beyond tolerance, not consistently
  new failure      ok in the baseline, failed (or no longer computed) now
  fixed            the reverse
  not comparable   task, solver or metric version changed
  missing / new    configuration in the baseline only / in the new results only

exit codes:
  0  something was compared and nothing regressed
  1  worse, new failure, missing (unless --allow-missing), or corrupt run files
  2  bad input, or nothing to compare (no shared configuration, no comparable metric)""")
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
        solvers = args.solver or list(registry.solvers())
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
    for attr, value in (("n_jobs", args.jobs), ("timeout", args.timeout), ("device", args.device),
                        ("backend", args.backend), ("scheduler", args.scheduler),
                        ("n_threads", args.threads)):
        if value is not None:
            setattr(config, attr, value)
    if args.no_retry:
        config.retry_failed = False
    _validate_run_options(config)
    return config


def _validate_run_options(config: RunConfig) -> None:
    import torch

    if config.n_jobs is None or config.n_jobs < 1:
        raise BadInput(f"-j/--jobs must be >= 1, got {config.n_jobs}")
    if config.timeout is not None and not config.timeout > 0:
        raise BadInput(f"--timeout must be > 0, got {config.timeout}")
    if config.n_threads is not None and config.n_threads < 1:
        raise BadInput(f"--threads must be >= 1, got {config.n_threads}")
    if config.device not in ("cpu", "cuda"):
        raise BadInput(f"device must be cpu or cuda, got {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda was asked for but torch sees no CUDA device on this host")
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


def check_writable(out: Path) -> None:
    """Fail with :class:`BadInput` unless ``out`` can be created and written."""
    out = Path(out).absolute()
    if out.exists() and not out.is_dir():
        raise BadInput(f"results directory {str(out)!r} exists and is not a directory")
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


def cmd_run(args) -> int:
    import torch

    from runners import parallel, store
    from runners.provenance import provenance

    config = _config_from_args(args)
    specs = expand(config)
    if not specs:
        raise BadInput("the selection is empty: no (task, solver) pair to run")
    if args.dry_run:
        for spec in specs:
            print(spec["run_id"], spec["task"], spec["task_params"], spec["solver"],
                  spec["solver_params"], "seed", spec["seed"], "t", spec["times"])
        print(f"{len(specs)} runs")
        return EXIT_OK
    out = Path(args.out or DEFAULT_OUT)
    check_writable(out)
    store.runs_dir(out).mkdir(parents=True, exist_ok=True)

    todo, corrupt = parallel.pending(specs, out, config.retry_failed)
    for path in corrupt:
        print(f"gfbench: warning: corrupt run file {path} will be redone", file=sys.stderr)
    n_threads = config.n_threads or max(1, (os.cpu_count() or 1) // config.n_jobs)
    options = {"timeout": config.timeout, "n_threads": n_threads, "device": config.device,
               "n_gpus": torch.cuda.device_count() if config.device == "cuda" else 0,
               "provenance": provenance()}
    print(f"gfbench: {len(specs)} runs, {len(specs) - len(todo)} already done, "
          f"{len(todo)} to run with -j {config.n_jobs} ({n_threads} threads each) -> {out}",
          file=sys.stderr)
    try:
        parallel.dispatch(todo, out, options, n_jobs=config.n_jobs, backend=config.backend,
                          scheduler=config.scheduler, show_progress=not args.quiet)
        frame = store.export(out)
    except store.StoreError as exc:
        raise BadInput(str(exc)) from None
    ids = {s["run_id"] for s in specs}
    selected = frame[frame["run_id"].isin(ids)]
    statuses = selected.drop_duplicates("run_id")["run_id"].map(
        selected.groupby("run_id")["status"].agg(lambda s: _worst(set(s))))
    counts = statuses.value_counts().to_dict()
    print("gfbench: runs by status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    if not args.no_report:
        from runners.report import write_report

        paths = write_report([out], out / "report")
        print(f"gfbench: report -> {paths['markdown']} and {paths['html']}", file=sys.stderr)
    failed = sum(v for k, v in counts.items() if k not in ("ok", "skipped"))
    return EXIT_FAILED if failed else EXIT_OK


def _worst(statuses: set[str]) -> str:
    for status in ("error", "timeout", "diverged"):
        if status in statuses:
            return status
    return "skipped" if statuses == {"skipped"} else "ok"


# ---------------------------------------------------------------- other ----
def cmd_list(args) -> int:
    from runners import registry
    from runners.profiles import builtin_profiles

    print("TASKS")
    for name, cls in registry.tasks().items():
        grid = ", ".join(f"{k}={_short(v)}" for k, v in cls.parameters.items())
        print(f"  {name:18s} v{cls.version}  {cls.description}\n{'':22s}params: {grid}; "
              f"times: {_short(list(cls.default_times))}")
    print("SOLVERS")
    for name, cls in registry.solvers().items():
        grid = ", ".join(f"{k}={_short(v)}" for k, v in cls.parameters.items())
        caps = ",".join(sorted(cls.capabilities))
        print(f"  {name:18s} v{cls.version}  [{caps}] {cls.description}\n{'':22s}params: {grid}")
    print("METRICS")
    for name, metric in registry.metrics().items():
        print(f"  {name:18s} v{metric.version}  {metric.description}")
    print("PROFILES")
    for name in builtin_profiles():
        print(f"  {name}")
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

    frame, corrupt = store.load_checked(dirs)
    if corrupt:
        print(f"gfbench: warning: {len(corrupt)} unreadable run file(s) (corrupt, partial or "
              "foreign) left out: " + ", ".join(map(str, corrupt)), file=sys.stderr)
    return frame, corrupt


def cmd_report(args) -> int:
    from runners.report import write_report

    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0] / "report"
    check_writable(out)
    frame, corrupt = _load_and_warn(dirs)
    paths = write_report(dirs, out, frame=frame, corrupt=corrupt)
    print(f"gfbench: report -> {paths['markdown']} and {paths['html']}")
    return EXIT_OK


def cmd_prune(args) -> int:
    from runners import store
    from runners.profiles import read_profile, to_config

    (out,) = _require_results([args.results])
    keep = {spec["run_id"] for name in args.profile
            for spec in expand(to_config(read_profile(name)))}
    paths = sorted(store.runs_dir(out).glob("*.json"))
    stale = [p for p in paths if p.stem not in keep]
    for path in stale:
        print(f"{'deleted' if args.delete else 'stale'} {path}")
        if args.delete:
            path.unlink()
    if args.delete and stale:
        store.export(out)
    print(f"gfbench: {len(stale)} of {len(paths)} run files belong to no grid of "
          f"{', '.join(args.profile)}" + ("" if args.delete or not stale else
                                           " (rerun with --delete to remove them)"),
          file=sys.stderr)
    return EXIT_OK


def cmd_leaderboard(args) -> int:
    from runners.leaderboard import write_leaderboard

    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0]
    check_writable(out)
    from runners import registry

    if args.metric and args.metric not in registry.metrics():
        raise BadInput(f"unknown metric {args.metric!r}; known: {', '.join(registry.metrics())}")
    frame, _ = _load_and_warn(dirs)
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


def main(argv: list[str] | None = None) -> int:
    """Run one ``gfbench`` command; returns the exit code."""
    try:
        args = _build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BadInput as exc:
        print(f"gfbench: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gfbench: interrupted; finished runs are kept, rerun to resume", file=sys.stderr)
        return 130


def console_main() -> None:
    """Entry point of the ``gfbench`` console script.

    SIGTERM (a scheduler's stop, ``kill``) ends like Ctrl-C: clean-up runs,
    finished runs are kept, and the message says how to resume.
    """
    signal.signal(signal.SIGTERM, _raise_interrupt)
    sys.exit(main())


if __name__ == "__main__":
    console_main()
