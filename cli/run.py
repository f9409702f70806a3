"""``gfbench run``: from the options to a grid of runs, the runs, and what they gave.

The options (or a profile, narrowed by ``--task``/``--solver`` and widened by
``-P``) become a :class:`execution.grid.RunConfig`, checked before anything is
written; :func:`cmd_run` then expands it, prints the dry-run estimate or asks
before a long grid, dispatches the runs that are not done yet
(:func:`execution.parallel.dispatch`), exports results.csv and writes the
report. Every check that can fail does so before the first file is written.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cli.output import RESULT_FILES, check_writable, describe_os_error, publish_report
from cli.parser import DEFAULT_OUT, EXIT_FAILED, EXIT_OK
from execution.grid import BadInput, GridBlock, RunConfig, expand, parse_seeds, parse_values


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
    from cli.profiles import parse_size, read_profile, to_config
    from execution import registry

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
        for block in config.blocks:
            block.metrics = None
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
    from execution.resources import total_memory_bytes

    total = total_memory_bytes()
    if config.max_memory and config.backend == "loky" and config.max_memory > total:
        raise BadInput(f"the memory limit of a run (--max-memory, or the profile's "
                       f"max_memory), {config.max_memory / 2**30:.1f} GB, is more than this "
                       f"machine's {total / 2**30:.1f} GB of physical memory: a run would "
                       "exhaust the machine before reaching it")


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
    from execution.timings import format_duration

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
    from cli.estimate import estimate_specs
    from execution import parallel, resources, store
    from execution.grid import count_runs
    from execution.provenance import provenance

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
        # imports overlap what follows; BLAS in the server is sized for the runs' threads
        parallel.warm_up(parallel.preload_modules(specs), n_threads=config.n_threads or 1)
    out = Path(args.out or DEFAULT_OUT)
    todo, corrupt = (parallel.pending(specs, out, config.retry_failed)
                     if store.runs_dir(out).is_dir() else (specs, []))
    # a resumed grid: what is left is the answer (and what a long grid asks about)
    estimate = estimate_specs(todo)
    if args.dry_run:
        if len(todo) < len(specs):
            print(f"gfbench: {len(specs)} runs, {len(specs) - len(todo)} already done in "
                  f"{out}; {len(todo)} to run (estimated below)")
        # the answer first (runs and time per solver, on what basis); the list on request
        print("\n".join(estimate.lines(config.n_jobs, n_threads=config.n_threads or 1)))
        if args.verbose and len(todo) <= 10_000:
            for spec in todo:
                print(spec["run_id"], spec["task"], spec["task_params"], spec["solver"],
                      spec["solver_params"], "seed", spec["seed"], "t", spec["times"])
        return EXIT_OK
    check_writable(out, RESULT_FILES)
    if config.backend == "dask" and config.scheduler:
        _check_scheduler(config.scheduler)
    _confirm_long_grid(estimate, config.n_jobs, args.yes)
    store.runs_dir(out).mkdir(parents=True, exist_ok=True)
    store.clean_stale_temp(out)
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
    statuses = selected.groupby("run_id")["status"].agg(lambda s: store.worst_status(set(s))) \
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

