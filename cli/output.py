"""What the command line writes, and how it fails: checks before writing, the report
swapped in whole, and a failed file operation in one line.

A command checks that its output directory can be written before it starts
(:func:`check_writable`), so bad input never leaves half a results directory;
a report is written into a staging directory and swapped in with the
interrupts held (:func:`publish_report`), so the markdown, HTML and figures
on disk always belong together.
"""
from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
from pathlib import Path

from execution.grid import BadInput


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


def describe_os_error(exc: OSError) -> str:
    """One line for a failed file operation: what, on which file, why."""
    from execution.store import StoreError

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

    from analysis.report import write_report

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

    from execution.store import _pid_alive

    for path in out.glob(".staging.*.tmp"):
        pid = path.name.split(".")[2]
        if path.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
