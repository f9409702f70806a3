"""Execute one run spec in the current process and build its rows.

This is what a run's child process does: build the task and the solver, ask
``skip``, time ``setup`` / ``run`` / metric evaluation, and turn everything —
including exceptions and non-finite output — into rows with a status.
"""
from __future__ import annotations

import json
import resource
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np

from execution import grid, registry
from solvers.base import GPU, GPU_ONLY, RunContext, SolverResult
from tasks.free_energy import skip_reason

ERROR_CHARS = 2000


def config_label(params: dict) -> str:
    """``{"b": 2, "a": 1}`` → ``"a=1,b=2"`` (stable, human readable)."""
    return ",".join(f"{k}={params[k]}" for k in sorted(params))


def base_row(spec: dict, options: dict) -> dict[str, Any]:
    """Fields shared by all rows of a run (no outcome yet)."""
    row = {
        # a plugin's row carries its name; its import path stays in task_path
        "run_id": spec["run_id"], "task": spec.get("task_name", spec["task"]),
        "task_path": spec["task"], "task_version": spec["task_version"],
        "task_code": spec.get("task_code", ""), "task_config": config_label(spec["task_params"]),
        # a plugin's row carries its class name; its import path stays in solver_path
        "solver": spec.get("solver_name", spec["solver"]), "solver_path": spec["solver"],
        "solver_version": spec["solver_version"],
        "solver_code": spec["solver_code"], "solver_config": config_label(spec["solver_params"]),
        "seed": spec["seed"], "metric_versions": json.dumps(spec["metrics"], sort_keys=True),
    }
    row.update({f"task.{k}": v for k, v in spec["task_params"].items()})
    row.update({f"solver.{k}": v for k, v in spec["solver_params"].items()})
    row.update({"device": options.get("device", "cpu"), "n_threads": options.get("n_threads", 1)})
    row.update(options.get("provenance", {}))
    return row


def outcome_rows(spec: dict, options: dict, status: str, error: str = "",
                 **fields: Any) -> list[dict]:
    """One row per evaluation time with the same outcome (error, timeout, skip)."""
    base = base_row(spec, options)
    metrics = {name: None for name in spec["metrics"]}
    return [{**base, "t": t, "status": status, "error": error[:ERROR_CHARS],
             "time_setup": None, "time_run": None, "time_eval": None, "peak_mem_mb": None,
             **metrics, "reference_error": None, "reference_provenance": None, "info": "{}",
             "finished_at": _now(), **fields} for t in spec["times"]]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _peak_mem_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _describe_exception(exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _finite(result: SolverResult) -> bool:
    if result.samples is not None and not np.isfinite(result.samples).all():
        return False
    return True


def _check_result(result: Any, dim: int) -> None:
    """Raise with a clear message when a solver's output is not a usable result."""
    if not isinstance(result, SolverResult):
        raise TypeError(f"solver returned {type(result).__name__}, not a SolverResult")
    if result.samples is not None:
        shape = np.shape(result.samples)
        if len(shape) != 2 or shape[1] != dim or shape[0] == 0:
            raise ValueError(f"solver returned samples of shape {shape} for a task of "
                             f"dimension {dim}; expected (n, {dim})")
    if result.weights is not None and np.shape(result.weights) != (np.shape(result.samples)[0],):
        raise ValueError(f"solver returned {np.shape(result.weights)} weights for "
                         f"{np.shape(result.samples)[0]} particles")


#: terms larger than this stay in the run's memory instead of the grid's shared cache
#: (the sliced W2's sorted projections, 16 MB, are cheaper to redo than to keep per run)
SHARED_TERM_BYTES = 4 << 20


def _shared_draws_class():
    """:class:`metrics.base.ReferenceDraws` whose disk cache keeps only small terms."""
    from metrics.base import ReferenceDraws, _load, _save

    class SharedReferenceDraws(ReferenceDraws):
        def cached(self, name, compute):
            if name in self._memory:
                return self._memory[name]
            path = self._path(name)
            value = _load(path) if path is not None else None
            if value is None:
                value = {k: np.asarray(v) for k, v in compute().items()}
                if path is not None and sum(v.nbytes for v in value.values()) \
                        <= SHARED_TERM_BYTES:
                    _save(path, value)
            self._memory[name] = value
            return value

    return SharedReferenceDraws


def reference_draws(spec: dict, task, reference, t: float, options: dict):
    """The reference's shared draws at ``t``: the same streams for every solver of the grid.

    With ``options["cache_dir"]`` (set by the runner for one invocation) the
    terms metrics derive from them — the energy distance's reference half, the
    reference log-densities of the SymKL draws — are computed by the first run
    of a (task, seed, t) and read by the others; values are identical either
    way (tested).
    """
    key = json.dumps([spec["task"], spec["task_params"], spec.get("task_code", ""),
                      spec["seed"], spec["seed_entropy"], float(t)], sort_keys=True, default=str)
    return _shared_draws_class()(reference, grid.reference_seed(spec, t),
                                 options.get("cache_dir"), key)


class TaskError(Exception):
    """A task's own output (its reference) is unusable: the row blames the task.

    Deliberately not a ValueError: a metric turns those into a NaN with a
    note, and a broken reference must never leave an ``ok`` row.
    """


#: reference draws checked when a reference is built (a fixed stream: no metric's changes)
PROBE_DRAWS = 64


def checked_reference(spec: dict, task, t: float):
    """``task.reference(t)`` with every sample and log-density it returns checked.

    Samples must be finite ``(n, dim)`` arrays and log-densities ``(n,)``
    arrays without NaN or +inf (and finite at the reference's own samples);
    tabulated densities and closed-form moments are checked once. A probe
    of :data:`PROBE_DRAWS` draws runs now, so that a broken task is named
    before a solver's output is judged against it. Raises :class:`TaskError`.
    """
    import dataclasses

    where = f"task {spec.get('task_name', spec['task'])}'s reference at t={t:g}"
    try:
        reference = task.reference(t)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 — whatever a task raises, it is the task's
        raise TaskError(f"{where} failed: {_describe_exception(exc)}") from exc
    if not dataclasses.is_dataclass(reference):
        raise TaskError(f"{where} is a {type(reference).__name__}, not a tasks.base.Reference")
    _check_tables(reference, task.dim, where)
    sample, log_density = reference.sample, reference.log_density
    reference = dataclasses.replace(
        reference, sample=sample and _checked_sampler(sample, task.dim, where),
        log_density=log_density and _checked_log_density(log_density, where))
    if reference.sample is not None:
        x = reference.sample(PROBE_DRAWS, np.random.default_rng(0))
        if reference.log_density is not None and \
                not np.isfinite(reference.log_density(x)).all():
            raise TaskError(f"{where} gives its own samples a log-density of -inf")
    return reference


def _checked_sampler(sample, dim: int, where: str):
    def checked(n, rng):
        x = np.asarray(sample(n, rng), dtype=np.float64)
        if x.shape != (n, dim):
            raise TaskError(f"{where} returned samples of shape {x.shape}; expected "
                            f"({n}, {dim})")
        bad = int((~np.isfinite(x)).any(axis=1).sum())
        if bad:
            raise TaskError(f"{where} returned non-finite samples ({bad} of {n})")
        return x

    return checked


def _checked_log_density(log_density, where: str):
    def checked(x):
        values = np.asarray(log_density(x), dtype=np.float64)
        n = np.shape(x)[0]
        if values.shape != (n,):
            raise TaskError(f"{where} returned log-densities of shape {values.shape} for "
                            f"{n} points; expected ({n},)")
        # -inf is a point outside the reference's support; NaN and +inf are no density
        bad = int((np.isnan(values) | (values == np.inf)).sum())
        if bad:
            raise TaskError(f"{where} returned NaN or +inf log-densities ({bad} of {n})")
        return values

    return checked


def _check_tables(reference, dim: int, where: str) -> None:
    """The reference's tabulated density and closed-form moments, if any."""
    if reference.grid is not None or reference.density is not None:
        grid, density = np.asarray(reference.grid, float), np.asarray(reference.density, float)
        if grid.ndim != 1 or density.shape != grid.shape or not np.isfinite(density).all() \
                or (density < 0).any() or not np.isfinite(grid).all():
            raise TaskError(f"{where} tabulates a density of shape {density.shape} on a grid "
                            f"of shape {grid.shape} that is not finite, non-negative and "
                            "of the grid's length")
    if reference.moments is not None:
        mean, cov = (np.asarray(m, dtype=np.float64) for m in reference.moments)
        if mean.shape != (dim,) or cov.shape != (dim, dim) \
                or not (np.isfinite(mean).all() and np.isfinite(cov).all()):
            raise TaskError(f"{where} returned moments of shapes {mean.shape} and "
                            f"{cov.shape}; expected finite ({dim},) and ({dim}, {dim})")


def _evaluate(spec: dict, task, result: SolverResult, t: float, options: dict,
              reference=None) -> dict[str, Any]:
    """Metric values (with standard errors, floors and notes) at one time.

    ``reference``: the task's reference at ``t`` as :func:`checked_reference`
    returns it (built here when not given).
    """
    reference = checked_reference(spec, task, t) if reference is None else reference
    rng = np.random.default_rng(grid.metric_seed(spec, t))
    draws = reference_draws(spec, task, reference, t, options)
    values: dict[str, Any] = {}
    notes: dict[str, str] = {}
    for name in spec["metrics"]:
        metric = registry.get_metric(name)
        # each metric gets its own stream so adding a metric changes no other value
        metric_rng = np.random.default_rng([int(rng.integers(2**31)), grid.stable_int(name)])
        outcome = metric(result, reference, rng=metric_rng, draws=draws) \
            if metric.applies(result, reference) else metric.not_applicable()
        values[name] = outcome.value
        values[f"{name}_se"] = outcome.se
        if np.isfinite(outcome.floor):
            values[f"{name}_floor"] = outcome.floor
        values.update({f"{name}_{part}": value for part, value in outcome.parts.items()})
        if outcome.note:
            notes[name] = outcome.note
    values["metric_notes"] = json.dumps(notes, sort_keys=True)
    values["law"] = result.law
    values["law_size"] = None if result.samples is None or result.law != "particles" \
        else int(np.shape(result.samples)[0])
    if reference.grid is not None and reference.density is not None \
            and result.log_density is not None:
        values["curve"] = _curve(reference, result)
    if spec["seed"] == 0 and t == max(spec["times"]) and reference.sample is not None:
        values["preview"] = _preview(reference, result, draws, rng)
    values["reference_error"] = reference.error_estimate
    values["reference_provenance"] = reference.provenance
    # the reference's scalar facts (a stationarity gap, the hidden state): JSON
    values["reference_info"] = json.dumps(
        {k: float(v) for k, v in reference.extras.items()
         if isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)},
        sort_keys=True)
    return values


#: points of each law in a row's preview
PREVIEW_POINTS = 500


def _preview(reference, result: SolverResult, draws, rng: np.random.Generator) -> str | None:
    """The solver's law and the reference projected on the reference's two main axes.

    For the report's small multiples (seed 0, last time): the first two
    principal components of 4096 reference draws (one in 1-D), and 500 points
    of each law on them — fresh draws of an i.i.d. law, a subsample of a
    particle set. JSON; None when the law has no samples.
    """
    try:
        y = draws.sample("preview", 4096)
        centre = y.mean(axis=0)
        _, _, vt = np.linalg.svd(y - centre, full_matrices=False)
        axes = vt[:min(2, y.shape[1])]
        if result.law in ("iid", "iid_density"):
            x = np.asarray(result.draw(PREVIEW_POINTS, np.random.default_rng(
                int(rng.integers(2**31))))[0], dtype=np.float64)
        else:
            x = np.asarray(result.samples, dtype=np.float64)
            if x.shape[0] > PREVIEW_POINTS:
                x = x[np.random.default_rng(0).choice(x.shape[0], PREVIEW_POINTS, replace=False)]
        if not np.isfinite(x).all():
            return None
        return json.dumps({"reference": ((y[:PREVIEW_POINTS] - centre) @ axes.T).round(4).tolist(),
                           "solver": ((x - centre) @ axes.T).round(4).tolist(),
                           "dim": int(y.shape[1])})
    except (ValueError, np.linalg.LinAlgError, TypeError):
        return None


def _curve(reference, result, n_points: int = 200) -> str:
    """Solver and reference densities on ≤200 grid points, for density figures."""
    step = max(1, len(reference.grid) // n_points)
    x = reference.grid[::step]
    p = np.exp(np.asarray(result.log_density(x[:, None]), dtype=np.float64))
    return json.dumps({"x": x.round(5).tolist(), "solver": p.round(7).tolist(),
                       "reference": reference.density[::step].round(7).tolist()})


def resolve_device(solver_cls, requested: str) -> tuple[str, str]:
    """(device, skip reason) for a solver given the requested device.

    torch is consulted only when a GPU is asked for or required.
    """
    caps = solver_cls.capabilities
    if not requested.startswith("cuda") and GPU_ONLY not in caps:
        return "cpu", ""
    import torch

    has_cuda = torch.cuda.is_available()
    if GPU_ONLY in caps and not has_cuda:
        return "cpu", "GPU-only solver and this host has no CUDA device"
    if requested.startswith("cuda") and GPU in caps | {GPU_ONLY} and has_cuda:
        return requested, ""
    if GPU_ONLY in caps:
        return "cuda", ""
    return "cpu", ""


def execute(spec: dict, options: dict,
            progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Run ``spec`` and return its rows; never raises for solver failures."""
    try:
        task_cls = registry.get_task(spec["task"])
        solver_cls = registry.get_solver(spec["solver"])
        device, reason = resolve_device(solver_cls, options.get("device", "cpu"))
        options = {**options, "device": device}
        if reason:
            return outcome_rows(spec, options, "skipped", reason)
        task = task_cls(grid.task_seed(spec), **spec["task_params"])
        solver = solver_cls(**spec["solver_params"])
        skip, reason = solver.skip(task)
        if skip:
            return outcome_rows(spec, options, "skipped", reason)
        reason = skip_reason(task, solver_cls)
        if reason:
            return outcome_rows(spec, options, "skipped", reason)
        context = RunContext(device=device, n_threads=int(options.get("n_threads", 1)),
                             progress=progress or (lambda done, total, message="": None))
        start = time.perf_counter()
        solver.setup(task, list(spec["times"]), grid.solver_seed(spec), context)
        time_setup = time.perf_counter() - start
        start = time.perf_counter()
        results = solver.run()
        time_run = time.perf_counter() - start
    except MemoryError as exc:
        return outcome_rows(spec, options, "oom", f"MemoryError at the run's memory limit: "
                                                  f"{_describe_exception(exc)}")
    except BaseException as exc:  # noqa: BLE001 — a failing solver is a status row, never a crash
        if isinstance(exc, SystemExit):
            return outcome_rows(spec, options, "error", f"the solver tried to exit the run "
                                                        f"process (SystemExit: {exc.code})")
        return outcome_rows(spec, options, "error", _describe_exception(exc))

    rows, base = [], base_row(spec, options)
    for t in spec["times"]:
        row = {**base, "t": t, "time_setup": time_setup, "time_run": time_run}
        result = results.get(t) if hasattr(results, "get") else None
        start = time.perf_counter()
        try:
            if result is None:
                raise RuntimeError(f"solver returned no result for t={t}")
            # a broken task is named before the solver's output is judged against it
            reference = checked_reference(spec, task, t)
            _check_result(result, task.dim)
            status = "ok" if _finite(result) else "diverged"
            if status == "diverged":
                error = "non-finite samples"
                values = {name: None for name in spec["metrics"]}
                values["metric_notes"] = json.dumps({name: "not computed: the solver diverged"
                                                     for name in spec["metrics"]})
            else:
                values = _evaluate(spec, task, result, t, options, reference)
                error = ""
            info = json.dumps(result.info, default=str)
        except BaseException as exc:  # noqa: BLE001 — a broken result is a status row too
            status, error, info = ("oom" if isinstance(exc, MemoryError) else "error",
                                   str(exc) if isinstance(exc, TaskError)
                                   else _describe_exception(exc), "{}")
            values = {name: None for name in spec["metrics"]}
            values.update(reference_error=None, reference_provenance=None)
        row.update(status=status, error=error[:ERROR_CHARS], **values, info=info,
                   time_eval=time.perf_counter() - start, peak_mem_mb=_peak_mem_mb(),
                   finished_at=_now())
        rows.append(row)
    return rows
