"""Running a grid: resume, parallel dispatch, hard limits, progress.

Every run executes in its own child process forked from a *forkserver* that
has already imported gfbench (cheap to start, and safe: the server never ran
any torch/BLAS work before forking). The child leads a process group of its
own and is a child subreaper, so everything a solver starts stays in its tree,
even a child in a session of its own or orphaned by a daemon's double fork.
The process that supervises it — the main process, a joblib/loky worker, a Dask
worker or a Ray task — claims the run (so concurrent runners compute it once),
waits at most ``timeout`` seconds while watching the resident memory of every
process of the run (:func:`execution.resources.run_processes`), and

- kills them all at the timeout (a ``timeout`` row), beyond ``max_memory``
  (an ``oom`` row) and, to leave nothing behind, after a normal end as well;
- records an ``error`` row when the child ends without writing its result,
  whatever its exit code (a crash, ``kill -9``, ``os._exit(0)``).

A supervisor that is killed takes its runs with it, even one whose solver
holds the GIL in C code: its forkserver (a process group of its own) sees
the supervisor go, kills every process of its runs and exits
(execution/preload.py); a run process is SIGKILLed by the kernel when its
forkserver dies (PR_SET_PDEATHSIG); a watchdog thread in the run covers the
rest, and loky workers die with the main process. Whatever happens, one
run's failure never stops the grid.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

from execution import store
from execution.execute import execute, outcome_rows
from execution.registry import add_import_paths, import_paths

_PROGRESS_PERIOD_S = 1.0


def apply_threads(n_threads: int) -> None:
    """Pin BLAS/OpenMP and torch intra-op threads of this process.

    torch is pinned directly when it is loaded already, otherwise through
    OMP_NUM_THREADS, which it reads when a solver imports it.
    """
    import sys

    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    threadpool_limits(n_threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n_threads)


def preload_modules(specs: list[dict]) -> list[str]:
    """The modules a grid's runs import: its tasks', solvers' and metrics'."""
    from execution import registry

    index = registry.index()
    names: set[str] = {"execution.parallel", "execution.store"}
    for spec in specs:
        for kind, name in (("tasks", spec["task"]), ("solvers", spec["solver"])):
            entry = index[kind].get(name)
            names.add(entry["module"] if entry else name.partition(":")[0])
        names.update(index["metrics"][m]["module"] for m in spec["metrics"]
                     if m in index["metrics"])
    return sorted(names)


def _progress_writer(path: str | None) -> Callable[[int, int, str], None]:
    """A throttled callback that writes ``done total message`` to ``path``."""
    last = [0.0]

    def report(done: int, total: int, message: str = "") -> None:
        now = time.monotonic()
        if path is None or now - last[0] < _PROGRESS_PERIOD_S:
            return
        last[0] = now
        try:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as handle:
                handle.write(f"{done} {total} {message}")
            os.replace(tmp, path)
        except OSError:
            pass  # progress is best effort

    return report


def _exit_with_supervisor(pid: int | None, period_s: float = 1.0) -> None:
    """Kill this run and everything it started once its supervisor is gone.

    The run's parent is the forkserver, not the process that waits for it,
    so a killed runner would otherwise leave the run (and whatever it
    started) computing for as long as it takes. A thread: it cannot run
    while a solver holds the GIL, which the forkserver's clean-up covers.
    """
    from execution.resources import kill_run

    def watch() -> None:
        while True:
            time.sleep(period_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                try:
                    kill_run(os.getpid(), spare=os.getpid())
                finally:
                    os._exit(3)
            except PermissionError:
                pass

    if pid:
        threading.Thread(target=watch, daemon=True).start()


def _tie_to_forkserver() -> None:
    """Make this run process live no longer than its forkserver, and keep what it starts.

    multiprocessing hands every forkserver child the write end of the pipe
    whose end-of-file tells the forkserver that its client is gone; a run
    holding it would keep its forkserver alive as long as itself, and the
    forkserver could never clean up after a killed runner. Closed here, the
    forkserver exits when its client does, and the kernel then kills this
    process (PR_SET_PDEATHSIG: the forkserver is single-threaded, so the
    thread that forked us lives exactly as long as it). As a child subreaper,
    this process adopts whatever its children orphan.
    """
    from multiprocessing import forkserver

    from execution.resources import become_subreaper, die_with_parent

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):  # set in forkserver children only (not under "spawn")
        try:
            os.close(fd)
        except OSError:
            pass
        server._forkserver_alive_fd = None  # a solver's own forkserver starts afresh
        die_with_parent()
    become_subreaper()


def _child_main(spec: dict, out: str, options: dict, failures=None) -> None:
    """The run process: execute ``spec`` and write its run file.

    A run file that cannot be written (a full disk) is not the solver's
    failure: its message goes to the supervisor through ``failures`` (a
    pipe's end), which stops the grid with it.
    """
    from execution.resources import kill_run, limit_memory, tune_allocator

    os.setpgid(0, 0)  # a group of its own: the supervisor kills everything the run starts
    _tie_to_forkserver()
    _exit_with_supervisor(options.get("supervisor_pid"))
    # a backstop below the supervisor's RSS watch: virtual memory, with room for libraries
    limit_memory(options["max_memory"] + VM_SLACK if options.get("max_memory") else None)
    tune_allocator()
    apply_threads(int(options.get("n_threads", 1)))
    # the forkserver may have started elsewhere: plugin directories come with the options
    if options.get("import_paths"):  # (not for none: it would empty the server's caches)
        add_import_paths(options["import_paths"])
    progress_dir = options.get("progress_dir")
    path = os.path.join(progress_dir, spec["run_id"]) if progress_dir else None
    try:
        rows = execute(spec, options, _progress_writer(path))
        try:
            store.write_run(Path(out), spec, rows)
        except store.StoreError as exc:
            if failures is None:
                raise
            failures.send(str(exc))
            raise SystemExit(1) from None  # quietly: the supervisor says it
    finally:
        # the solver's leftovers, while they are still this process's descendants: once it
        # exits, they are re-parented out of its tree
        kill_run(os.getpid(), spare=os.getpid())


def _context(preload: list[str] | None = None, n_threads: int = 1):
    """The forkserver context; a server started now imports ``preload`` (module names) and
    loads BLAS for ``n_threads`` threads, as its runs use (execution/preload.py)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    if preload is not None:
        from multiprocessing import spawn

        # and how a run re-creates our __main__ (the script, `-m cli.main`): done there once
        main = {k: v for k, v in spawn.get_preparation_data("main").items()
                if "main_from" in k or k in ("sys_argv", "sys_path")}
        os.environ.update(GFBENCH_PRELOAD=",".join(preload), GFBENCH_THREADS=str(int(n_threads)),
                          GFBENCH_MAIN=json.dumps(main))
    ctx.set_forkserver_preload(["execution.preload"])
    return ctx


def warm_up(preload: list[str], n_threads: int = 1) -> None:
    """Start this process's forkserver now, so its imports overlap the caller's work."""
    if _context(preload, n_threads).get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


_START_LOCK = threading.Lock()


def _start(child) -> None:
    """Start ``child`` even inside a loky/dask worker.

    A loky worker reports the start method "loky", which a forkserver child
    cannot resolve when it prepares itself; name a standard one meanwhile.
    A dask worker is daemonic; lift the flag while starting the child.
    """
    default = mp.context._default_context
    config = mp.current_process()._config
    with _START_LOCK:
        saved, daemon = default._actual_context, config.get("daemon")
        if mp.get_start_method(allow_none=True) not in mp.get_all_start_methods():
            default._actual_context = default.get_context("spawn")
        # dask workers are daemonic processes, which multiprocessing forbids to
        # have children; our child is always joined or killed by supervise()
        config["daemon"] = False
        try:
            child.start()
        finally:
            default._actual_context = saved
            if daemon is not None:
                config["daemon"] = daemon


#: virtual address space a run may use beyond its memory limit (shared libraries, arenas)
VM_SLACK = 4 << 30
#: how often a supervisor checks its run (memory, claim heartbeat)
WATCH_PERIOD_S = 0.25


def supervise(spec: dict, out: str, options: dict) -> dict:
    """Run one spec in a child process under hard limits; return a summary."""
    from execution.resources import die_with_parent

    label = run_label(spec)
    if os.getpid() != options.get("main_pid"):
        die_with_parent()  # a pool worker must not outlive a killed runner
    claim = store.Claim.take(Path(out), spec["run_id"])
    if claim is None:
        return {"run_id": spec["run_id"], "status": "claimed", "label": label}
    path = store.runs_dir(Path(out)) / f"{spec['run_id']}.json"
    payload = store.read_run(path)
    if payload is not None and (store.run_status(payload) not in store.FAILED
                                or path.stat().st_mtime >= options.get("started_at", 0.0)):
        claim.release()  # another runner finished it since this grid was planned
        return {"run_id": spec["run_id"], "status": "run by another runner", "label": label}
    try:
        status, error = _supervise_claimed(spec, out, options, claim)
    finally:
        claim.release()
    return {"run_id": spec["run_id"], "status": status, "label": label, "error": error}


def run_label(spec: dict) -> str:
    """A run in words: ``em(n_particles=200) on ou(dim=1) seed 0``.

    Plugins appear under their ``name`` (the spec's ``solver_name`` /
    ``task_name``), not their import path.
    """
    from execution.execute import config_label

    def named(kind: str) -> str:
        params = config_label(spec[f"{kind}_params"])
        name = spec.get(f"{kind}_name", spec[kind])
        return f"{name}({params})" if params else name

    return f"{named('solver')} on {named('task')} seed {spec['seed']}"


def _supervise_claimed(spec, out, options, claim) -> tuple[str, str]:
    """Run a claimed spec under its limits; (run status, first line of its error)."""
    max_memory = options.get("max_memory")
    options = {**options, "supervisor_pid": os.getpid()}
    context = _context(options.get("preload"), int(options.get("n_threads", 1)))
    failures, failures_end = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(spec, out, options, failures_end),
                            daemon=False)
    start = time.perf_counter()
    _start(child)
    failures_end.close()
    # every process of the run seen so far (pid -> start time): those a run process that
    # ended left behind are no longer its descendants, but are still killed
    seen = {child.pid: store.process_start(child.pid)}
    try:
        outcome, peak = _watch(child, options, claim, seen, start)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the run dies with its supervisor
        _kill(child, seen)
        raise
    _kill(child, seen)  # the run's leftovers (a solver's own children) go too
    _raise_write_failure(failures)
    path = store.runs_dir(Path(out)) / f"{spec['run_id']}.json"
    if outcome is not None:
        store.write_run(Path(out), spec, outcome_rows(
            spec, options, outcome[0], outcome[1], time_run=time.perf_counter() - start,
            peak_mem_mb=peak / 2**20 if peak else None))
    elif store.read_run(path) is None:
        code = child.exitcode
        why = (f"run process killed by signal {signal.Signals(-code).name}" if code < 0
               else f"run process exited with code {code} without writing its result")
        status = "oom" if code == -signal.SIGKILL and max_memory and peak > 0.9 * max_memory \
            else "error"
        store.write_run(Path(out), spec, outcome_rows(spec, options, status, why))
    if options.get("progress_dir"):
        try:
            os.unlink(os.path.join(options["progress_dir"], spec["run_id"]))
        except OSError:
            pass
    payload = store.read_run(path)
    if payload is None:
        return "error", "the run left no readable result file"
    return store.run_status(payload), first_error(payload)


def _raise_write_failure(failures) -> None:
    """Raise the run process's StoreError, if it could not write its run file."""
    try:
        message = failures.recv() if failures.poll() else None
    except (EOFError, OSError):
        message = None  # the run ended without a word: its exit code tells the rest
    finally:
        failures.close()
    if message:
        raise store.StoreError(message)


def _watch(child, options: dict, claim, seen: dict[int, str], start: float
           ) -> tuple[tuple[str, str] | None, int]:
    """Wait for the run process within the run's limits.

    Returns (status, why) when a limit was crossed (None when the run ended
    by itself) and the peak resident memory of all the run's processes
    together; ``seen`` gains every process of the run met on the way.
    """
    from execution.resources import rss_bytes, run_processes

    timeout, max_memory = options.get("timeout"), options.get("max_memory")
    peak, last_beat = 0, time.monotonic()
    while True:
        child.join(WATCH_PERIOD_S)
        if not child.is_alive():
            return None, peak
        if timeout is not None and time.perf_counter() - start > timeout:
            return ("timeout", f"killed after the {timeout:g} s timeout"), peak
        processes = run_processes(child.pid, seen)
        # a process gone stays gone (its start time rules out a reused pid): keep the live
        # ones, and the run process's own entry, which guards its pid
        for pid in [pid for pid in seen if pid not in processes and pid != child.pid]:
            del seen[pid]
        seen.update(processes)
        if max_memory:
            rss = rss_bytes(processes)
            peak = max(peak, rss)
            if rss > max_memory:
                return ("oom", _oom_message(rss, max_memory, len(processes) - 1)), peak
        if time.monotonic() - last_beat > 5.0:
            claim.heartbeat()
            last_beat = time.monotonic()


def _oom_message(rss: int, limit: int, n_started: int) -> str:
    """Why a run was killed for memory: how much, against which limit, counting what."""
    who = (f"the run process and the {n_started} process{'es' * (n_started > 1)} it started, "
           "together" if n_started else "the run process alone")
    return (f"killed using {rss / 2**20:.0f} MB of resident memory ({who}), over the "
            f"{limit / 2**20:.0f} MB limit a run may use (--max-memory)")


def _kill(child, seen: dict[int, str]) -> None:
    """SIGKILL every process of the run (its tree, its group, those seen), then reap it."""
    from execution.resources import kill_run

    if child.pid:
        kill_run(child.pid, seen)
    if child.is_alive():
        child.kill()
    child.join()


def pending(specs: list[dict], out: Path, retry_failed: bool = True) -> tuple[list[dict], list[Path]]:
    """Specs still to run (resume), and the corrupt run files found."""
    valid, corrupt = store.scan(out)
    todo = []
    for spec in specs:
        payload = valid.get(spec["run_id"])
        if payload is None:
            todo.append(spec)
        elif store.run_status(payload) in store.FAILED and retry_failed:
            todo.append(spec)
    return todo, corrupt


class LineProgress:
    """Progress for a log, not a terminal: a line every ``period`` seconds and at the end.

    Used when stderr is not a terminal (redirected, nohup, CI) or reports no
    width, where a progress bar's carriage returns make an unreadable file.
    The line gives runs done, failures so far, the rate and an ETA.
    """

    def __init__(self, total: int, period: float = 30.0, stream=None) -> None:
        import sys

        self.total, self.period, self.done, self.failed = total, period, 0, 0
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.period or self.done == self.total:
            self.last = now
            self._line(now)

    def _line(self, now: float) -> None:
        from execution.timings import format_duration

        elapsed = now - self.start
        eta = (f", ETA {format_duration(elapsed / self.done * (self.total - self.done))}"
               if self.done and self.done < self.total else "")
        failed = f", {self.failed} failed" if self.failed else ""
        current = f" [{self.postfix}]" if self.postfix and self.done < self.total else ""
        print(f"gfbench: {self.done}/{self.total} runs done{failed} after "
              f"{format_duration(elapsed)}{eta}{current}", file=self.stream, flush=True)

    def write(self, text: str) -> None:
        self.failed += 1
        print(f"gfbench: {text}", file=self.stream, flush=True)

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _progress_bar(total: int, show: bool):
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere, nothing when not shown."""
    import shutil
    import sys

    from tqdm.auto import tqdm

    if show and (not sys.stderr.isatty() or shutil.get_terminal_size((0, 0)).columns == 0):
        return LineProgress(total)
    return tqdm(total=total, unit="run", disable=not show, desc="gfbench", dynamic_ncols=True)


class _ProgressMonitor(threading.Thread):
    """Shows the most recent in-run progress message in the bar's postfix."""

    def __init__(self, directory: str, bar) -> None:
        super().__init__(daemon=True)
        self.directory, self.bar, self.stop = directory, bar, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(_PROGRESS_PERIOD_S):
            try:
                entries = [os.path.join(self.directory, f) for f in os.listdir(self.directory)
                           if not f.endswith(".tmp")]
                if not entries:
                    self.bar.set_postfix_str("", refresh=False)
                else:
                    newest = max(entries, key=os.path.getmtime)
                    with open(newest) as handle:
                        done, total, message = (handle.read().split(" ", 2) + ["", ""])[:3]
                    self.bar.set_postfix_str(f"{message} {done}/{total}".strip(), refresh=True)
            except (OSError, ValueError):
                pass


def _report_waiting(bar, out: Path, claimed: list[str]) -> None:
    """Say which runs this runner waits for, and who holds them (never wait without a word)."""
    owners = {}
    for run_id in claimed:
        owner = store.claim_owner(store.runs_dir(out) / f".{run_id}.claim")
        key = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}" if owner else "?"
        owners[key] = owners.get(key, 0) + 1
    text = (f"waiting for {len(claimed)} run(s) another live runner holds ("
            + ", ".join(f"{n} by {who}" for who, n in owners.items())
            + "); they are taken over if it dies")
    if isinstance(bar, LineProgress):
        bar.write(text)
    else:
        import sys

        bar.write(f"gfbench: {text}", file=sys.stderr)


def _report_failure(bar, summary: dict) -> None:
    """One line for a failed run: its status, what it was and why (first line of its error).

    Written even with ``--quiet`` (the bar is then disabled, the line is not):
    a failure must never go unnoticed.
    """
    import sys

    reason = f": {summary['error']}" if summary.get("error") else ""
    text = f"[{summary['status']}] {summary['label']}{reason}"
    if isinstance(bar, LineProgress):
        bar.write(text)
    else:
        bar.write(f"gfbench: {text}", file=sys.stderr)


def first_error(payload: dict | None, limit: int = 200) -> str:
    """The first line of the first error message among a run's rows ('' when none)."""
    for row in (payload or {}).get("rows", []):
        text = str(row.get("error") or "").strip()
        if text and row.get("status") != "skipped":
            line = text.splitlines()[0]
            return line if len(line) <= limit else line[:limit - 1] + "…"
    return ""


def _start_ray(stack: ExitStack) -> None:
    """Connect to Ray (``RAY_ADDRESS`` or a running local cluster) or start a local instance.

    An instance started here is shut down when the grid ends; one that was
    already running (``ray.init`` by the caller, a cluster) is left alone.
    """
    import logging

    import ray

    if ray.is_initialized():
        return
    # Ray's banner and info logs would interleave with the progress lines
    ray.init(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)
    stack.callback(ray.shutdown)


def _ray_unordered(calls: list[tuple], n_jobs: int, n_threads: int):
    """Yield ``supervise(*call)`` summaries as Ray tasks finish, at most ``n_jobs`` at once.

    joblib's Ray backend (a multiprocessing pool) cannot return results as
    they finish, so progress and failure lines would wait for the whole grid;
    plain Ray tasks can. Each task supervises its run exactly as a loky
    worker does (a forkserver child of its own, timeout and memory limits),
    asks Ray for its threads' CPUs (capped at the largest node, or it would
    never be scheduled), and is never retried: a run is computed once.
    """
    import ray

    largest = max((node.get("Resources", {}).get("CPU", 1.0) for node in ray.nodes()
                   if node.get("Alive")), default=1.0)
    remote = ray.remote(supervise).options(num_cpus=min(float(n_threads), largest),
                                           max_retries=0)
    queue, pending = iter(calls), []
    try:
        while True:
            for call in queue:
                pending.append(remote.remote(*call))
                if len(pending) >= max(1, n_jobs):
                    break
            if not pending:
                return
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        # interrupted: on a cluster that outlives us the runs must not go on (killing
        # the worker kills its run through the run's supervisor watch)
        for ref in pending:
            ray.cancel(ref, force=True)


def dispatch(specs: list[dict], out: Path, options: dict, n_jobs: int = 1,
             backend: str = "loky", scheduler: str | None = None,
             show_progress: bool = True) -> Counter:
    """Run ``specs`` in parallel; returns a Counter of run statuses."""
    from joblib import Parallel, delayed, parallel_config

    counts: Counter = Counter()
    if not specs:
        return counts
    # workers and forkservers may have started in another directory (or on another host)
    out = Path(out).absolute()
    progress_dir = tempfile.mkdtemp(prefix="gfbench-progress-")
    cache_dir = _shared_cache(out)
    options = {**options, "progress_dir": progress_dir, "main_pid": os.getpid(),
               "started_at": time.time(), "cache_dir": str(cache_dir) if cache_dir else None,
               "import_paths": import_paths()}
    with ExitStack() as stack:
        stack.callback(_drop_cache, cache_dir)
        if backend == "dask":
            from dask.distributed import Client

            client = stack.enter_context(Client(scheduler) if scheduler else Client(processes=True))
            stack.enter_context(parallel_config(backend="dask", wait_for_workers_timeout=60))
            n_jobs = -1
            del client
        elif backend == "ray":
            _start_ray(stack)
        bar = stack.enter_context(_progress_bar(len(specs), show_progress))
        monitor = _ProgressMonitor(progress_dir, bar)
        monitor.start()
        try:
            calls = [(spec, str(out), _assign_device(options, i)) for i, spec in enumerate(specs)]
            if backend == "ray":
                summaries = _ray_unordered(calls, n_jobs, int(options.get("n_threads", 1)))
            else:
                runner = Parallel(n_jobs=n_jobs, return_as="generator_unordered",
                                  **({"backend": backend} if backend in ("loky", "threading")
                                     else {}))
                summaries = runner(delayed(supervise)(*call) for call in calls)
            claimed = []
            for summary in summaries:
                if summary["status"] == "claimed":
                    claimed.append(summary["run_id"])
                    continue
                counts[summary["status"]] += 1
                bar.update(1)
                if summary["status"] not in ("ok", "skipped", "run by another runner"):
                    _report_failure(bar, summary)
            # runs another runner holds: wait for them, or take them over if it died
            by_id = {spec["run_id"]: spec for spec in specs}
            if claimed:
                _report_waiting(bar, out, claimed)
            while claimed:
                time.sleep(0.5)
                waiting = []
                for run_id in claimed:
                    if store.read_run(store.runs_dir(out) / f"{run_id}.json") is not None \
                            and not (store.runs_dir(out) / f".{run_id}.claim").exists():
                        counts["run by another runner"] += 1
                        bar.update(1)
                        continue
                    summary = supervise(by_id[run_id], str(out), options)
                    if summary["status"] == "claimed":
                        waiting.append(run_id)
                    else:
                        counts[summary["status"]] += 1
                        bar.update(1)
                        if summary["status"] not in ("ok", "skipped", "run by another runner"):
                            _report_failure(bar, summary)
                claimed = waiting
        finally:
            monitor.stop.set()
            shutil.rmtree(progress_dir, ignore_errors=True)
    return counts


def _shared_cache(out: Path) -> Path | None:
    """This invocation's cache of reference terms, ``OUT/.cache/<pid>``; the caches of
    invocations that died (kill -9) are removed here."""
    root = Path(out) / ".cache"
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.isdigit() and not store._pid_alive(int(entry.name)):
                shutil.rmtree(entry, ignore_errors=True)
    path = root / str(os.getpid())
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # OUT/.cache is a file, or unwritable: runs share terms in memory only
    return path


def _drop_cache(path: Path | None) -> None:
    if path is None:
        return
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # only when no other invocation is using it
    except OSError:
        pass


def _assign_device(options: dict, index: int) -> dict:
    """Round-robin CUDA devices over runs: one device per concurrent worker."""
    device = options.get("device", "cpu")
    n_gpus = options.get("n_gpus", 0)
    if device == "cuda" and n_gpus:
        return {**options, "device": f"cuda:{index % n_gpus}"}
    return options
