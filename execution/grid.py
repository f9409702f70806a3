"""Configuration → grid of run specifications.

A run spec is a plain dict naming one (task, task parameters, solver, solver
parameters, seed, evaluation times) and carrying everything that defines the
run id. Seeds are derived with ``numpy.random.SeedSequence`` from stable
hashes, so every solver on the same (task, task parameters, seed) sees the
same task randomness and the same metric randomness (paired comparisons).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from execution import registry

#: default root entropy of every seed (change it to draw a new family of runs)
DEFAULT_ENTROPY = 2021_1206
#: limits on what one invocation may ask for (a typo must not exhaust the machine)
MAX_RUNS = 1_000_000
MAX_RANGE = 100_000
MAX_SEED = 2**32 - 1
MAX_TIME = 1e4


class BadInput(ValueError):
    """Invalid user input: reported as one line on stderr with exit code 2."""


@dataclass
class GridBlock:
    """Every task in ``tasks`` crossed with every solver in ``solvers``.

    Each maps a name to a parameter grid ``{param: [values]}``; a task grid
    may also hold ``times`` (a subset of evaluation times). ``seeds``, when
    set, replaces the run's seeds for this block only (e.g. 15 seeds for a
    cheap task, 3 for an expensive one); ``metrics``, when set, replaces the
    run's metrics for this block only (e.g. the predictive metrics of a data
    task beside the transient tasks' distances), without changing the run ids
    of the other blocks.
    """

    tasks: dict[str, dict[str, list]]
    solvers: dict[str, dict[str, list]]
    seeds: list[int] | None = None
    metrics: list[str] | None = None


@dataclass
class RunConfig:
    """Everything ``gfbench run`` needs, from the CLI or a profile."""

    blocks: list[GridBlock]
    seeds: list[int] = field(default_factory=lambda: [0])
    metrics: list[str] | None = None
    timeout: float | None = None
    n_jobs: int = 1
    device: str = "cpu"
    seed_entropy: int = DEFAULT_ENTROPY
    backend: str = "loky"
    scheduler: str | None = None
    retry_failed: bool = True
    n_threads: int | None = None
    max_memory: int | None = None


def stable_int(value: Any) -> int:
    """A 32-bit integer that depends only on ``value``'s canonical JSON."""
    text = json.dumps(value, sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def task_seed(spec: dict) -> np.random.SeedSequence:
    """Task randomness: depends on (task, task params, seed) only."""
    return np.random.SeedSequence(spec["seed_entropy"], spawn_key=(
        stable_int(spec["task"]), stable_int(spec["task_params"]), spec["seed"]))


def solver_seed(spec: dict) -> np.random.SeedSequence:
    """Solver randomness: (task, task params, seed, solver name)."""
    return np.random.SeedSequence(spec["seed_entropy"], spawn_key=(
        stable_int(spec["task"]), stable_int(spec["task_params"]), spec["seed"],
        stable_int(spec["solver"]), 1))


def metric_seed(spec: dict, t: float) -> np.random.SeedSequence:
    """Metric randomness: shared by all solvers on the same task, seed and time.

    Keyed on the time's value, not its position, so that solvers evaluated at
    different sets of times still share the streams at a common time.
    """
    return np.random.SeedSequence(spec["seed_entropy"], spawn_key=(
        stable_int(spec["task"]), stable_int(spec["task_params"]), spec["seed"], 2,
        stable_int(round(float(t), 12))))


def reference_seed(spec: dict, t: float) -> np.random.SeedSequence:
    """Root of the reference's draws at ``t`` (:class:`metrics.base.ReferenceDraws`)."""
    return np.random.SeedSequence(spec["seed_entropy"], spawn_key=(
        stable_int(spec["task"]), stable_int(spec["task_params"]), spec["seed"], 3,
        stable_int(round(float(t), 12))))


#: what a run id hashes: everything that defines a run's outcome, the code included
RUN_ID_KEYS = ("task", "task_params", "task_version", "task_code", "solver", "solver_params",
               "solver_version", "solver_code", "seed", "times", "metrics", "metric_code",
               "seed_entropy")


def run_id(spec: dict) -> str:
    """Hash of everything that defines a run's outcome (:data:`RUN_ID_KEYS`)."""
    keys = RUN_ID_KEYS
    return hashlib.sha256(json.dumps({k: spec[k] for k in keys}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:16]


def _product(grid: dict[str, list]) -> list[dict[str, Any]]:
    keys = sorted(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _check_finite(kind: str, name: str, params: dict) -> None:
    for key, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{kind} {name!r}: parameter {key}={value} is not finite")


def _resolve_times(task_cls, name: str, times: list | None) -> list[float]:
    if times is None:
        return [float(t) for t in task_cls.default_times]
    try:
        times = [float(t) for t in times]
    except (TypeError, ValueError):
        raise BadInput(f"task {name!r}: times must be numbers, got {times!r}") from None
    bad = [t for t in times if not math.isfinite(t) or t <= 0 or t > MAX_TIME]
    if bad or not times:
        raise BadInput(f"task {name!r}: times must be in (0, {MAX_TIME:g}], got {times!r}")
    return sorted(set(times))


def _metric_versions(names: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """Versions and code hashes of the selected metrics (all when ``names`` is None)."""
    known = registry.index()["metrics"]
    if names is None:
        names = [name for name, metric in known.items() if metric["default"]]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BadInput(f"unknown metric(s) {unknown}; known: {', '.join(known)}")
    return ({name: known[name]["version"] for name in names},
            {name: registry.metric_code(name) for name in names})


def _default_grid(kind: str, name: str) -> dict[str, list]:
    """A plugin's default parameter grid, from the index (built-ins) or its class."""
    entry = registry.index()[kind].get(name)
    if entry is not None:
        return entry["parameters"]
    try:
        cls = registry.get_task(name) if kind == "tasks" else registry.get_solver(name)
    except KeyError as exc:
        raise BadInput(exc.args[0]) from None
    return cls.parameters


def count_runs(config: RunConfig) -> int:
    """Runs ``config`` asks for, counted without building them (before validation).

    Duplicates across blocks are counted twice (the expansion removes them).
    """
    total = 0
    for block in config.blocks:
        seeds = len(block.seeds or config.seeds)
        for task, task_grid in block.tasks.items():
            grid = {**_default_grid("tasks", task), **task_grid}
            task_runs = math.prod(len(v) for k, v in grid.items() if k != "times")
            solver_runs = sum(math.prod(len(v) for v in {**_default_grid("solvers", name),
                                                          **solver_grid}.values())
                              for name, solver_grid in block.solvers.items())
            total += task_runs * solver_runs * seeds
    return total


def expand(config: RunConfig) -> list[dict]:
    """All run specs of ``config``, validated; raises :class:`BadInput`."""
    n_runs = count_runs(config)
    if n_runs > MAX_RUNS:
        raise BadInput(f"the grid asks for {n_runs:,} runs, over the limit of {MAX_RUNS:,} "
                       "a single invocation may run; split it")
    run_metrics = _metric_versions(config.metrics)
    specs, seen, checked = [], set(), set()
    for block in config.blocks:
        metric_versions, metric_code = (run_metrics if block.metrics is None
                                        else _metric_versions(block.metrics))
        for task_name, task_grid in block.tasks.items():
            try:
                task_cls = registry.get_task(task_name)
            except KeyError as exc:
                raise BadInput(exc.args[0]) from None
            task_grid = dict(task_grid)
            times = _resolve_times(task_cls, task_name, task_grid.pop("times", None))
            full_task_grid = {**{k: list(v) for k, v in task_cls.parameters.items()}, **task_grid}
            for task_params in _product(full_task_grid):
                _check_finite("task", task_name, task_params)
                try:
                    task_cls.validate_params(task_params)
                    key = (task_name, json.dumps(task_params, sort_keys=True, default=str))
                    if key not in checked:
                        task_cls.check_inputs(task_params)
                        checked.add(key)
                except (ValueError, TypeError, OSError) as exc:
                    raise BadInput(str(exc)) from None
                for solver_name, solver_grid in block.solvers.items():
                    try:
                        solver_cls = registry.get_solver(solver_name)
                    except KeyError as exc:
                        raise BadInput(exc.args[0]) from None
                    unknown = set(solver_grid) - set(solver_cls.parameters)
                    if unknown:
                        raise BadInput(f"solver {solver_name!r} has no parameter(s) "
                                       f"{sorted(unknown)}; known: {sorted(solver_cls.parameters)}")
                    full_solver_grid = {**{k: list(v) for k, v in solver_cls.parameters.items()},
                                        **solver_grid}
                    for solver_params in _product(full_solver_grid):
                        _check_finite("solver", solver_name, solver_params)
                        try:
                            solver_cls(**solver_params)
                        except (ValueError, TypeError) as exc:
                            raise BadInput(str(exc)) from None
                        except Exception as exc:  # noqa: BLE001 — a plugin's constructor
                            raise BadInput(f"solver {solver_name!r} cannot be built with "
                                           f"{solver_params}: {type(exc).__name__}: "
                                           f"{exc}") from None
                        for seed in block.seeds or config.seeds:
                            spec = {
                                "task": task_name, "task_params": task_params,
                                "task_name": registry.display_name("tasks", task_name, task_cls),
                                "task_version": task_cls.version,
                                "task_code": registry.code_hash(task_cls),
                                "solver": solver_name,
                                "solver_name": registry.display_name("solvers", solver_name,
                                                                     solver_cls),
                                "solver_params": solver_params,
                                "solver_version": solver_cls.version,
                                "solver_code": registry.code_hash(solver_cls),
                                "seed": int(seed), "times": times, "metrics": metric_versions,
                                "metric_code": metric_code,
                                "seed_entropy": int(config.seed_entropy),
                            }
                            spec["run_id"] = run_id(spec)
                            if spec["run_id"] not in seen:
                                seen.add(spec["run_id"])
                                specs.append(spec)
    return specs


def parse_value(text: str) -> Any:
    """CLI value: int, float, bool or string (in that order)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_values(text: str) -> list[Any]:
    """``"1,2,3"`` or an inclusive integer range ``"1..12"`` → list of values."""
    if ".." in text and "," not in text:
        lo, _, hi = text.partition("..")
        try:
            low, high = int(lo), int(hi)
        except ValueError:
            raise BadInput(f"bad range {text!r}: expected INT..INT") from None
        if high < low:
            raise BadInput(f"empty range {text!r}: the end is below the start")
        if high - low + 1 > MAX_RANGE:
            raise BadInput(f"range {text!r} has {high - low + 1:,} values, over the limit of "
                           f"{MAX_RANGE:,}")
        return list(range(low, high + 1))
    values = [parse_value(v) for v in text.split(",") if v.strip()]
    if not values:
        raise BadInput(f"empty value list {text!r}")
    return values


def parse_seeds(text: str | int | list) -> list[int]:
    """``3`` → [0, 1, 2]; ``"0,4"`` or ``"2..5"`` → explicit seeds."""
    if isinstance(text, list):
        values = text
    elif isinstance(text, int) and not isinstance(text, bool) \
            or (isinstance(text, str) and text.isdigit()):
        n = int(text)
        if n < 1 or n > MAX_RANGE:
            raise BadInput(f"--seeds N must be between 1 and {MAX_RANGE:,}, got {n:,}")
        return list(range(n))
    else:
        values = parse_values(str(text))
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEED
               for v in values):
        raise BadInput(f"seeds must be integers in [0, {MAX_SEED}], got {text!r}")
    return [int(v) for v in values]
