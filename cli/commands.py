"""The commands that read results directories: ``list``, ``report``, ``prune``,
``leaderboard`` and ``compare`` (``run`` is :mod:`cli.run`).

Each takes the parsed arguments, checks its input (a results directory has a
``runs/``; an output directory can be written) and calls the analysis or the
store; it returns an exit code of :mod:`cli.parser`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cli.output import check_writable, describe_os_error, publish_report
from cli.parser import EXIT_FAILED, EXIT_OK
from execution.grid import BadInput, expand


def cmd_list(args) -> int:
    from cli.estimate import basis, estimate_profile, load_timings, timing_files
    from cli.profiles import builtin_profiles, read_profile
    from execution import registry

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
    from execution import store

    out = []
    for p in paths:
        path = Path(p)
        if not store.runs_dir(path).is_dir():
            raise BadInput(f"{p!r} is not a gfbench results directory (no runs/ inside)")
        out.append(path)
    return out


def _load_and_warn(dirs: list[Path]):
    """Rows of ``dirs``; unreadable run files are counted and named on stderr."""
    from execution import store

    frame, corrupt, stale = store.load_current(dirs)
    if corrupt:
        print(f"gfbench: warning: {len(corrupt)} unreadable run file(s) (corrupt, partial or "
              "foreign) left out: " + ", ".join(map(str, corrupt)), file=sys.stderr)
    if stale:
        print(f"gfbench: {len(stale)} run file(s) of older code generations left out "
              "(`gfbench prune` lists them)", file=sys.stderr)
    return frame, corrupt


def cmd_report(args) -> int:
    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0] / "report"
    check_writable(out)
    frame, corrupt = _load_and_warn(dirs)
    from execution import store

    store.clean_stale_temp(out)
    try:
        paths = publish_report(dirs, out, frame=frame, corrupt=corrupt)
    except OSError as exc:
        raise BadInput(f"cannot write the report: {describe_os_error(exc)}; the previous "
                       "report, if any, is left as it was") from None
    print(f"gfbench: report -> {paths['markdown']} and {paths['html']}")
    return EXIT_OK


def cmd_prune(args) -> int:
    from cli.profiles import read_profile, to_config
    from execution import store

    (out,) = _require_results([args.results])
    valid, corrupt = store.scan(out)
    _, generations = store.split_generations(valid)
    stale = {run_id: "older code generation of a rerun experiment" for run_id in generations}
    if args.profile:
        # matched by experiment, not run id: a run of older code whose configuration the
        # profile still produces is a result not yet rerun, not a leftover to delete
        keep = {store.replicate_key(spec) for name in args.profile
                for spec in expand(to_config(read_profile(name)))}
        stale.update({run_id: f"in no grid of {', '.join(args.profile)}"
                      for run_id, payload in valid.items()
                      if store.replicate_key(payload["spec"]) not in keep
                      and run_id not in stale})
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
    from analysis.leaderboard import write_leaderboard

    dirs = _require_results(args.results)
    out = Path(args.out) if args.out else dirs[0]
    check_writable(out)
    from execution import registry

    known = registry.index()["metrics"]
    if args.metric and args.metric not in known:
        raise BadInput(f"unknown metric {args.metric!r}; known: {', '.join(known)}")
    frame, _ = _load_and_warn(dirs)
    if args.metric:
        from analysis.aggregate import metric_columns

        if args.metric not in metric_columns(frame):
            raise BadInput(f"no run in {', '.join(map(str, dirs))} has values of metric "
                           f"{args.metric!r}")
    paths = write_leaderboard(dirs, out, metric=args.metric, frame=frame)
    print(f"gfbench: leaderboard -> {paths['markdown']} and {paths['csv']}")
    return EXIT_OK


def cmd_compare(args) -> int:
    import math

    from analysis.compare import NothingCompared, compare_dirs

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
