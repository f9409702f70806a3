"""Imported once by the forkserver so that every run process starts warm.

Each run is a fork of the forkserver. The modules a grid's runs need — its
tasks', solvers' and metrics' (``GFBENCH_PRELOAD``, set by the runner before
the server starts) — are imported here once instead of in every run process,
and so are the modules they import *inside functions* (found by reading their
source, as the code hashes are): a task that imports scikit-learn only when it
is built would otherwise pay that import (about 1 s) in every run, since a
fork inherits only what the server imported. Importing is all the server
does: it never runs torch or BLAS work before forking. torch is the
exception to the lazy imports: it is imported only when a solver of the grid
imports it at module level, so a grid without one starts in well under a
second and its runs do not inherit torch's pages (which would count against
their memory). A module that fails to import must not take the forkserver
down: the run that needs it reports the error as its own row.

The forkserver is also what cleans up after a killed runner. It leads a
process group of its own (a ``kill`` of the runner's group, or a terminal's
signals, leave it to do its work), it exits when its client — the runner or
the pool worker that supervises runs — is gone, and on its way out it kills
every process of its runs: a run process whose solver holds the GIL cannot
run its own watchdog, and its children would not die with it.
"""
from __future__ import annotations

import ast
import atexit
import importlib
import os
import sys

#: the BLAS/OpenMP thread variables a run process sets (execution.parallel.apply_threads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Before anything loads a BLAS: a library loaded here for the machine's thread count
# (numpy's OpenBLAS, scipy's own copy) stayed slower in every run forked from us even after
# the run limited it (a trivial OU run's evaluation took 40-60 ms more on 2 loaded cores).
# Loaded for the runs' own count (GFBENCH_THREADS, from the runner), they start as a run
# that loads them itself would.
for _variable in THREAD_VARIABLES:
    os.environ[_variable] = os.environ.get("GFBENCH_THREADS") or "1"

import execution.execute  # noqa: E402,F401  (every run needs it)
import execution.resources  # noqa: E402  (every run process sets its limits with it)

#: packages imported lazily only if an eager import of the grid has loaded them already
ON_DEMAND = ("torch",)
#: the runner's own packages: their lazy imports (Dask, Ray, pandas' writers, the report)
#: serve the process that supervises and exports, never a run process
RUNNER_PACKAGES = ("execution", "cli", "analysis")
#: what every run process imports lazily (execute's shared reference draws, thread limits)
RUN_IMPORTS = ("metrics.base", "threadpoolctl", "multiprocessing.forkserver")


def _kill_runs(server_pid: int) -> None:
    """At the forkserver's exit: kill every process of its runs (each run's tree)."""
    if os.getpid() != server_pid:  # a run process (forked with this handler) never cleans up
        return
    from execution.resources import kill_run

    kill_run(server_pid, spare=server_pid)


def lazy_imports(modules) -> list[str]:
    """Modules that ``modules`` and the own-tree code they use import inside functions.

    Read from the sources (:func:`execution.registry.module_closure`), never
    by running anything. For ``from a.b import c`` the module ``a.b`` is
    named (``c`` may be a function); relative imports, the runner's own
    packages and :data:`ON_DEMAND` packages not loaded yet are left out.

    Parameters
    ----------
    modules : iterable of str
        Module names, as ``GFBENCH_PRELOAD`` lists them.

    Returns
    -------
    list of str
        Module names, sorted, each once.
    """
    from execution.registry import _module_path, module_closure

    own: set[str] = set()
    for name in modules:
        if name.split(".")[0] not in RUNNER_PACKAGES:
            own |= module_closure(name)
    found: set[str] = set()
    for name in sorted(own):
        if name.split(".")[0] in RUNNER_PACKAGES:
            continue
        path = _module_path(name)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8")) if path else None
        except (OSError, SyntaxError, ValueError):
            continue  # its run reports what is wrong with it
        for node in ast.walk(tree) if tree else ():
            # module-level imports ran when the module was imported: only nested ones count
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.update(_imports_in(node))
    return sorted(n for n in found
                  if n.split(".")[0] not in ON_DEMAND or n.split(".")[0] in sys.modules)


def _imports_in(function: ast.AST) -> set[str]:
    """Absolute module names imported anywhere in ``function``'s body."""
    names: set[str] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _import_quietly(names) -> None:
    """Import each of ``names``; a failure is the business of the run that needs it."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 — reported by the run that needs it
            pass


def _warm_main() -> None:
    """Re-create the runner's ``__main__`` here, as every run process would otherwise do.

    A forkserver child rebuilds its client's main module before it runs
    (``multiprocessing.spawn.prepare``): the ``gfbench`` script, or ``cli.main``
    under ``python -m``, and everything they import (the command line, its
    parser and profiles), some 25 ms a run. Done here with the same
    preparation data (the runner's ``sys.argv`` and ``sys.path`` too, which a
    script may read as it is imported), the runs find it done and skip it. The
    module runs as
    ``__mp_main__``, exactly as in a run, so a script's ``if __name__ ==
    "__main__"`` block does not run.
    """
    import json
    from multiprocessing import spawn

    try:
        data = json.loads(os.environ.get("GFBENCH_MAIN") or "{}")
        if isinstance(data, dict) and data:
            spawn.prepare(data)
    except (Exception, SystemExit):  # noqa: BLE001 — each run then rebuilds it as before
        pass


def _warm() -> None:
    """Import what the grid's runs will need, eagerly named and lazily used."""
    named = [n for n in os.environ.get("GFBENCH_PRELOAD", "").split(",") if n]
    _import_quietly(named)
    _warm_main()
    _import_quietly(RUN_IMPORTS)
    execution.resources._libc()  # found once here, not by each run (ldconfig -p)
    try:
        _import_quietly(lazy_imports(named))
    except Exception:  # noqa: BLE001 — an unreadable source only costs its run the import
        pass
    try:
        from execution import registry

        # cached per process: read once here instead of once per run; only when the runner
        # has written it, since building it imports every plugin (torch's solvers too)
        if (registry.cache_dir() / f"index-{registry._sources_digest()}.json").is_file():
            registry.index()
    except Exception:  # noqa: BLE001 — each run then reads (and reports) it itself
        pass


try:
    os.setpgid(0, 0)
except OSError:
    pass  # a session leader already leads its group
atexit.register(_kill_runs, os.getpid())
_warm()
