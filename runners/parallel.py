"""Running a grid: resume, parallel dispatch, hard timeouts, progress.

Every run executes in its own child process forked from a *forkserver* that
has already imported gfbench (cheap to start, and safe: the server never ran
any torch/BLAS work before forking). The process that supervises it — the
main process, a joblib/loky worker or a Dask worker — waits at most
``timeout`` seconds, then kills it with SIGKILL and records a ``timeout`` row.
A child that dies on its own (crash, OOM-kill, ``kill -9``) is recorded as
``error``. Whatever happens, one run's failure never stops the grid.
"""
from __future__ import annotations

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

from runners import store
from runners.execute import execute, outcome_rows

_PRELOAD = ["runners.execute", "runners.preload"]
_PROGRESS_PERIOD_S = 1.0


def apply_threads(n_threads: int) -> None:
    """Pin BLAS/OpenMP and torch intra-op threads of this process."""
    import torch
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    threadpool_limits(n_threads)
    torch.set_num_threads(n_threads)


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


def _exit_with_supervisor(pid: int | None, period_s: float = 2.0) -> None:
    """Exit this run process once its supervisor is gone.

    The run's parent is the forkserver, not the process that waits for it,
    so a killed runner would otherwise leave the run computing (and writing
    a row nobody waits for) for as long as it takes.
    """
    def watch() -> None:
        while True:
            time.sleep(period_s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(3)
            except PermissionError:
                pass

    if pid:
        threading.Thread(target=watch, daemon=True).start()


def _child_main(spec: dict, out: str, options: dict) -> None:
    from runners.resources import tune_allocator

    _exit_with_supervisor(options.get("supervisor_pid"))
    tune_allocator()
    apply_threads(int(options.get("n_threads", 1)))
    progress_dir = options.get("progress_dir")
    path = os.path.join(progress_dir, spec["run_id"]) if progress_dir else None
    rows = execute(spec, options, _progress_writer(path))
    store.write_run(Path(out), spec, rows)


def _context():
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


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


def supervise(spec: dict, out: str, options: dict) -> dict:
    """Run one spec in a child process under a hard timeout; return a summary."""
    timeout = options.get("timeout")
    options = {**options, "supervisor_pid": os.getpid()}
    child = _context().Process(target=_child_main, args=(spec, out, options), daemon=False)
    start = time.perf_counter()
    _start(child)
    try:
        child.join(timeout)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the run dies with its supervisor
        child.kill()
        child.join()
        raise
    if child.is_alive():
        child.kill()
        child.join()
        rows = outcome_rows(spec, options, "timeout",
                            f"killed after the {timeout:g} s timeout",
                            time_run=time.perf_counter() - start)
        store.write_run(Path(out), spec, rows)
    elif child.exitcode != 0:
        code = child.exitcode
        why = (f"run process killed by signal {signal.Signals(-code).name}" if code < 0
               else f"run process exited with code {code}")
        store.write_run(Path(out), spec, outcome_rows(spec, options, "error", why))
    if options.get("progress_dir"):
        try:
            os.unlink(os.path.join(options["progress_dir"], spec["run_id"]))
        except OSError:
            pass
    payload = store.read_run(store.runs_dir(Path(out)) / f"{spec['run_id']}.json")
    status = store.run_status(payload) if payload else "error"
    return {"run_id": spec["run_id"], "status": status,
            "label": f"{spec['solver']} on {spec['task']} {spec['task_params']} seed {spec['seed']}"}


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


def dispatch(specs: list[dict], out: Path, options: dict, n_jobs: int = 1,
             backend: str = "loky", scheduler: str | None = None,
             show_progress: bool = True) -> Counter:
    """Run ``specs`` in parallel; returns a Counter of run statuses."""
    from joblib import Parallel, delayed, parallel_config
    from tqdm.auto import tqdm

    counts: Counter = Counter()
    if not specs:
        return counts
    progress_dir = tempfile.mkdtemp(prefix="gfbench-progress-")
    options = {**options, "progress_dir": progress_dir}
    with ExitStack() as stack:
        if backend == "dask":
            from dask.distributed import Client

            client = stack.enter_context(Client(scheduler) if scheduler else Client(processes=True))
            stack.enter_context(parallel_config(backend="dask", wait_for_workers_timeout=60))
            n_jobs = -1
            del client
        elif backend == "ray":
            from ray.util.joblib import register_ray

            register_ray()
            stack.enter_context(parallel_config(backend="ray"))
        bar = stack.enter_context(tqdm(total=len(specs), unit="run", disable=not show_progress,
                                       desc="gfbench", dynamic_ncols=True))
        monitor = _ProgressMonitor(progress_dir, bar)
        monitor.start()
        try:
            jobs = (delayed(supervise)(spec, str(out), _assign_device(options, i))
                    for i, spec in enumerate(specs))
            runner = Parallel(n_jobs=n_jobs, return_as="generator_unordered",
                              **({"backend": backend} if backend in ("loky", "threading") else {}))
            for summary in runner(jobs):
                counts[summary["status"]] += 1
                bar.update(1)
                if summary["status"] not in ("ok", "skipped"):
                    bar.write(f"{summary['status']}: {summary['label']}")
        finally:
            monitor.stop.set()
            shutil.rmtree(progress_dir, ignore_errors=True)
    return counts


def _assign_device(options: dict, index: int) -> dict:
    """Round-robin CUDA devices over runs: one device per concurrent worker."""
    device = options.get("device", "cpu")
    n_gpus = options.get("n_gpus", 0)
    if device == "cuda" and n_gpus:
        return {**options, "device": f"cuda:{index % n_gpus}"}
    return options
