"""Per-run result files and their aggregation.

Layout of a results directory::

    OUT/runs/<run_id>.json   one file per run, written atomically
    OUT/results.csv          aggregate, one row per (run, t)
    OUT/results.parquet      same, typed
    OUT/timings.csv          median seconds per configuration (:mod:`execution.timings`)

A run file holds its spec, its rows and a sha256 checksum of both; a file
that fails to parse or to match its checksum counts as missing (the run is
redone) and is reported.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from execution.timings import timings_csv

if TYPE_CHECKING:
    import pandas as pd

FORMAT = 1
#: statuses of a finished run (not retried on resume)
FINAL = ("ok", "skipped", "diverged")
#: statuses of a failed run (retried on resume unless told not to); ``oom``: killed at
#: its memory limit
FAILED = ("error", "timeout", "oom")
STATUSES = FINAL + FAILED


#: non-metric columns that hold numbers
NUMERIC_COLUMNS = ("t", "peak_mem_mb", "reference_error", "law_size")


def _metric_names() -> list[str]:
    from execution import registry

    return list(registry.index()["metrics"])


class StoreError(OSError):
    """The results directory cannot be written."""


def runs_dir(out: Path) -> Path:
    return Path(out) / "runs"


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def _clean(value: Any) -> Any:
    """Strict JSON: NaN becomes None, ±inf the strings "inf" / "-inf" (kept, not lost)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _checksum(spec: dict, rows: list[dict]) -> str:
    body = json.dumps({"spec": spec, "rows": rows}, sort_keys=True, default=_json_default)
    return hashlib.sha256(body.encode()).hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: files are written through mkstemp (mode 0600) and renamed: they get the mode a plain
#: open() would have given them under the user's umask (0644 under the usual 022)
FILE_MODE = 0o666 & ~_current_umask()


def _temp_prefix(path: Path) -> str:
    """Temporary files carry their writer's pid, so a later run can tell stale ones."""
    return f".{path.name}.{os.getpid()}."


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None


def atomic_write_bytes(path: Path, writer) -> None:
    """Call ``writer(tmp_path)`` then rename onto ``path`` (for parquet, PNG...)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as exc:
        raise StoreError(f"cannot write in {path.parent}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def write_run(out: Path, spec: dict, rows: list[dict]) -> Path:
    """Atomically write one run's rows; returns the file path."""
    rows = [_clean(r) for r in rows]
    spec = _clean(spec)
    # written_ns orders runs that finish within one second of each other (finished_at has
    # whole seconds, which the reports parse); it is not part of the rows or the checksum
    payload = {"format": FORMAT, "run_id": spec["run_id"], "spec": spec, "rows": rows,
               "checksum": _checksum(spec, rows), "written_ns": time.time_ns()}
    path = runs_dir(out) / f"{spec['run_id']}.json"
    atomic_write_text(path, json.dumps(payload, default=_json_default, allow_nan=False))
    return path


#: a run file larger than this is not one gfbench wrote (the largest committed is ~60 KB)
MAX_RUN_BYTES = 64 * 2**20


def is_run_file(path: Path) -> bool:
    """Whether ``path`` may be read as a run file: a regular file (not a link, FIFO or
    device: a link to /dev/zero would be read forever) of at most :data:`MAX_RUN_BYTES`."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= MAX_RUN_BYTES


def read_run(path: Path) -> dict | None:
    """A run file's payload, or None when it is corrupt, partial, foreign or not a
    bounded regular file (:func:`is_run_file`).

    Beyond its checksum, a payload must have the shape the readers rely on:
    a spec with the run's id and times, and one row (a mapping with a known
    status and a numeric time) per evaluation time.
    """
    if not is_run_file(path):
        return None
    try:
        payload = json.loads(Path(path).read_text())
        ok = (isinstance(payload, dict) and payload.get("format") == FORMAT
              and payload.get("checksum") == _checksum(payload["spec"], payload["rows"])
              and payload["run_id"] == Path(path).stem and _well_formed(payload))
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    return payload if ok else None


def _well_formed(payload: dict) -> bool:
    spec, rows = payload["spec"], payload["rows"]
    if not (isinstance(spec, dict) and isinstance(rows, list) and rows
            and spec.get("run_id") == payload["run_id"] and isinstance(spec.get("times"), list)):
        return False
    for row in rows:
        if not (isinstance(row, dict) and row.get("run_id") == payload["run_id"]
                and row.get("status") in STATUSES and isinstance(row.get("t"), (int, float))
                and not isinstance(row.get("t"), bool) and isinstance(row.get("task"), str)
                and isinstance(row.get("solver"), str)):
            return False
    return True


def scan(out: Path) -> tuple[dict[str, dict], list[Path]]:
    """Valid run payloads by run id, and the list of corrupt files."""
    valid, corrupt = {}, []
    directory = runs_dir(out)
    if not directory.is_dir():
        return valid, corrupt
    for path in sorted(directory.glob("*.json")):  # hidden temp and claim files excluded
        payload = read_run(path)
        if payload is None:
            corrupt.append(path)
        else:
            valid[payload["run_id"]] = payload
    return valid, corrupt


def run_status(payload: dict) -> str:
    """One status for a whole run: the worst of its rows."""
    return worst_status({row["status"] for row in payload["rows"]})


def worst_status(statuses: set[str]) -> str:
    """The worst of a run's row statuses: a failure, else ``skipped`` if all were, else ok."""
    for status in ("error", "timeout", "oom", "diverged"):
        if status in statuses:
            return status
    return "skipped" if statuses == {"skipped"} else "ok"


# --- generations ----------------------------------------------------------------------------
def replicate_key(spec: dict) -> str:
    """What a run replicates: task and solver configuration, seed and seed entropy.

    Two run files with one key are the same experiment; if their code
    differs, they are two generations of it.
    """
    return json.dumps([spec.get("task"), spec.get("task_params"), spec.get("solver"),
                       spec.get("solver_params"), spec.get("seed"), spec.get("seed_entropy")],
                      sort_keys=True, default=str)


def _generation(spec: dict) -> tuple:
    return (spec.get("task_version"), spec.get("task_code"), spec.get("solver_version"),
            spec.get("solver_code"))


def _same_generation(a: dict, b: dict) -> bool:
    """Same task and solver code, and the same code for every metric both computed."""
    if _generation(a) != _generation(b):
        return False
    codes_a, codes_b = a.get("metric_code") or {}, b.get("metric_code") or {}
    return all(codes_a[m] == codes_b[m] for m in set(codes_a) & set(codes_b))


def _finished(payload: dict) -> tuple[str, int]:
    """When a run finished: its rows' latest ``finished_at`` (whole seconds), then the
    file's ``written_ns`` (0 in files written before it existed) to order runs of one second."""
    written = payload.get("written_ns")
    written = written if isinstance(written, int) and not isinstance(written, bool) else 0
    return (max((str(row.get("finished_at") or "") for row in payload["rows"]), default=""),
            written)


def split_generations(payloads: dict[str, dict]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Payloads of the newest code generation of each experiment, and the stale rest.

    Within a :func:`replicate_key`, the run finished last defines the newest
    generation; runs of that generation (other evaluation times or metric
    sets) stay current, runs of older code are stale: an edit followed by a
    rerun never pools old and new numbers as replicates.
    """
    by_key: dict[str, list[str]] = {}
    for run_id, payload in payloads.items():
        by_key.setdefault(replicate_key(payload["spec"]), []).append(run_id)
    current, stale = {}, {}
    for run_ids in by_key.values():
        newest = max(run_ids, key=lambda r: (_finished(payloads[r]), r))
        for run_id in run_ids:
            same = _same_generation(payloads[run_id]["spec"], payloads[newest]["spec"])
            (current if same else stale)[run_id] = payloads[run_id]
    return current, stale


def load(out: Path | Iterable[Path]) -> pd.DataFrame:
    """All rows of one or several results directories as one DataFrame (valid files only)."""
    return load_checked(out)[0]


def load_checked(out: Path | Iterable[Path]) -> tuple[pd.DataFrame, list[Path]]:
    """All current rows, and the run files that could not be read (corrupt, partial, foreign).

    Readers name the second list: a results directory is never summarised as
    if a broken file were not there. Rows of stale generations are left out
    (:func:`load_current` names them).
    """
    frame, corrupt, _ = load_current(out)
    return frame, corrupt


def load_current(out: Path | Iterable[Path]) -> tuple[pd.DataFrame, list[Path], list[Path]]:
    """Rows of the newest generation of each experiment (:func:`split_generations`),
    the unreadable run files, and the stale ones (older code of a rerun experiment)."""
    import pandas as pd  # heavy: only readers need it

    outs = [Path(out)] if isinstance(out, (str, Path)) else [Path(o) for o in out]
    payloads, paths, corrupt = {}, {}, []
    for directory in outs:
        valid, bad = scan(directory)
        corrupt.extend(bad)
        for run_id, payload in valid.items():
            payloads[run_id], paths[run_id] = payload, runs_dir(directory) / f"{run_id}.json"
    current, stale = split_generations(payloads)
    rows = [row for run_id, payload in payloads.items() if run_id in current
            for row in payload["rows"]]
    frame = pd.DataFrame(rows)
    metric_names = [c for c in _metric_names() if c in frame.columns]
    prefixes = tuple(f"{name}_" for name in metric_names)  # a metric's parts: symkl_mass, ...
    numeric = [c for c in frame.columns if c in NUMERIC_COLUMNS or c.endswith(("_se", "_floor"))
               or c.startswith("time_") or (prefixes and c.startswith(prefixes))] + metric_names
    for column in numeric:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")  # "inf" -> inf
    if not frame.empty:
        frame = frame.sort_values(["task", "solver", "solver_config", "task_config", "seed", "t"],
                                  kind="stable").reset_index(drop=True)
    return frame, corrupt, sorted(paths[r] for r in stale)


def export(out: Path) -> "pd.DataFrame":
    """Aggregate ``out``: results.csv, results.parquet and timings.csv, atomically."""
    out = Path(out)
    frame = load(out)
    atomic_write_text(out / "results.csv", frame.to_csv(index=False))
    atomic_write_bytes(out / "results.parquet", lambda p: frame.to_parquet(p, index=False))
    atomic_write_text(out / "timings.csv", timings_csv(frame))
    return frame


def note_for(notes: Any, metric: str) -> str:
    """The note a row's ``metric_notes`` (JSON) holds for ``metric`` ('' if none)."""
    if isinstance(notes, dict):
        return str(notes.get(metric, ""))
    try:
        parsed = json.loads(notes) if isinstance(notes, str) else {}
    except ValueError:
        return ""
    return str(parsed.get(metric, "")) if isinstance(parsed, dict) else ""


# --- leftovers and claims ------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temp(directory: Path) -> list[Path]:
    """Remove temporary files left by writers that died (kill -9), recursively.

    A temporary file is ``.<name>.<pid>.<random>.tmp``; it is stale when that
    pid is not alive on this host. Files of live writers are left alone.
    """
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.rglob(".*.tmp"):
        parts = path.name.split(".")
        pid = next((int(p) for p in reversed(parts[:-2]) if p.isdigit()), None)
        if pid is not None and _pid_alive(pid):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


#: a claim not refreshed for this long belongs to a runner that is gone (other hosts)
CLAIM_STALE_S = 120.0


class Claim:
    """A runner's claim on one run: ``runs/.<run_id>.claim``, created exclusively.

    Several runners on one results directory (other shells, Dask workers on
    other hosts) each compute a run only after claiming it; a claim whose
    owner is dead (same host: its pid is gone; other host: not refreshed for
    :data:`CLAIM_STALE_S` seconds) is taken over.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def take(cls, out: Path, run_id: str) -> "Claim | None":
        """Claim the run, or None when a live runner holds it.

        The claim is written to a temporary file and hard-linked into place,
        so it appears atomically with its content (another runner never reads
        a half-written claim), and the link fails if a claim exists.
        """
        path = runs_dir(out) / f".{run_id}.claim"
        owner = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "start": process_start(os.getpid()), "boot": _boot_id()})
        for _ in range(2):
            try:
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path),
                                           suffix=".tmp")
                with os.fdopen(fd, "w") as handle:
                    handle.write(owner)
                try:
                    os.link(tmp, path)
                finally:
                    os.unlink(tmp)
            except FileExistsError:
                if not _claim_is_stale(path):
                    return None
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    return cls(path)  # not removable (a directory): claims are a courtesy
                continue
            except OSError:
                return cls(path)  # claims are a courtesy: an unwritable one does not stop a run
            return cls(path)
        return None

    def heartbeat(self) -> None:
        try:
            os.utime(self.path)
        except OSError:
            pass

    def release(self) -> None:
        try:
            self.path.unlink()
        except OSError:
            pass


def process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot, /proc), '' where unknown.

    A pid alone does not name a process: after a restart the pid in an old
    claim is often alive again (1, in a container) as another process.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2:].split()[19]  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return ""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def claim_owner(path: Path) -> dict:
    """The owner a claim file names ({} when unreadable)."""
    try:
        owner = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _claim_is_stale(path: Path) -> bool:
    """A claim is stale when its owner is gone: on this host, its pid is not alive, or is
    alive as another process (other start time, or another boot); elsewhere, it was not
    refreshed for :data:`CLAIM_STALE_S`. A claim path that is not a regular file is stale."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return True
        age = time.time() - path.stat().st_mtime
    except OSError:
        return True
    owner = claim_owner(path)
    if not owner:
        return True
    if owner.get("host") == socket.gethostname():
        try:
            pid = int(owner.get("pid", -1))
        except (TypeError, ValueError):
            return True
        if pid <= 0 or not _pid_alive(pid):
            return True
        if owner.get("boot") and owner.get("boot") != _boot_id():
            return True
        return bool(owner.get("start")) and owner.get("start") != process_start(pid)
    return age > CLAIM_STALE_S
