"""How long a grid will take, from the committed results' own timings.

Every results directory gets a ``timings.csv`` on export
(:mod:`execution.timings`): per configuration (task, task config, solver,
solver config), the median seconds one run took (set-up + solve + metric
evaluation) and on how many runs that rests. An estimate sums those medians
over the runs asked for; a configuration that never ran is "unknown", never
guessed. Committed results were measured on 2 CPU cores with two runs sharing
them, so the estimates are of that kind.
"""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from execution.execute import config_label
from execution.grid import parse_seeds
from execution.timings import format_duration

PROJECT_RESULTS = Path(__file__).resolve().parents[1] / "results"


def timing_files(directories: Iterable[Path] | None = None) -> list[Path]:
    """The ``timings.csv`` files an estimate rests on (default: the committed results')."""
    if directories is None:
        # results/gpu-*: runs timed on a lent GPU, not the 2 CPU cores the estimates speak of
        return sorted(p for p in PROJECT_RESULTS.glob("*/timings.csv")
                      if not p.parent.name.startswith("gpu-"))
    return [Path(d) / "timings.csv" for d in directories if (Path(d) / "timings.csv").is_file()]


def basis(files: list[Path]) -> str:
    """What an estimate rests on, in one line (printed with every estimate)."""
    if not files:
        return ("basis: no timings.csv found (the committed results/ are not part of this "
                "install), so every run is of unknown time")
    return (f"basis: median seconds per run (set-up + solve + evaluation) in {_names(files)}, "
            "timed on 2 cores with two runs sharing them; a configuration never run there is "
            "of unknown time")


def _names(files: list[Path]) -> str:
    """``results/{large,standard}/timings.csv`` for the committed files, else the paths."""
    if all(f.parent.parent == PROJECT_RESULTS and f.name == "timings.csv" for f in files):
        inner = ",".join(f.parent.name for f in files)
        return f"results/{{{inner}}}/timings.csv" if len(files) > 1 \
            else f"results/{inner}/timings.csv"
    return ", ".join(str(f) for f in files)


def machine_load() -> tuple[float, int]:
    """(1-minute load average, usable cores) of this machine now."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return load, max(1, cores)


def slowdown(n_jobs: int, load: float, cores: int, n_threads: int = 1) -> float:
    """How much slower runs go than when timed, given the machine's load now.

    Timings were taken with the cores just busy (two one-thread runs on two
    cores), so runs go at that speed while load + the grid's threads fit the
    cores, and share them beyond: ``max(1, (load + n_jobs * n_threads) / cores)``.
    """
    return max(1.0, (max(0.0, load) + n_jobs * max(1, n_threads)) / max(1, cores))


def load_timings(directories: Iterable[Path] | None = None) -> dict[tuple, float]:
    """(task, task_config, solver, solver_config) → median seconds, over the given
    results directories (default: every committed one under ``results/``)."""
    if directories is None:
        directories = [p.parent for p in timing_files()]
    table: dict[tuple, tuple[float, int]] = {}
    for directory in directories:
        path = Path(directory) / "timings.csv"
        try:
            with path.open(newline="") as handle:
                for row in csv.DictReader(handle):
                    key = (row["task"], row["task_config"], row["solver"], row["solver_config"])
                    n = int(row["n_runs"])
                    if key not in table or n > table[key][1]:
                        table[key] = (float(row["seconds"]), n)
        except (OSError, KeyError, ValueError):
            continue
    return {key: seconds for key, (seconds, _) in table.items()}


@dataclass
class Estimate:
    """Runs and known seconds per solver; ``unknown`` runs have no committed timing."""

    per_solver: dict[str, list[float]] = field(default_factory=dict)  # [runs, seconds, unknown]

    def add(self, solver: str, seconds: float | None) -> None:
        entry = self.per_solver.setdefault(solver, [0, 0.0, 0])
        entry[0] += 1
        if seconds is None:
            entry[2] += 1
        else:
            entry[1] += seconds

    @property
    def runs(self) -> int:
        return int(sum(e[0] for e in self.per_solver.values()))

    @property
    def seconds(self) -> float:
        return sum(e[1] for e in self.per_solver.values())

    @property
    def unknown(self) -> int:
        return int(sum(e[2] for e in self.per_solver.values()))

    def wall(self, n_jobs: int) -> float:
        """Seconds on ``n_jobs`` parallel runs (perfect packing: a lower bound)."""
        return self.seconds / max(1, n_jobs)

    def lines(self, n_jobs: int, load: tuple[float, int] | None = None, n_threads: int = 1,
              files: list[Path] | None = None) -> list[str]:
        """For ``--dry-run``: one line per solver, the basis, and the total.

        Parameters
        ----------
        n_jobs, n_threads : int
            Parallel runs and threads per run.
        load : (float, int), optional
            Load average and cores (default: this machine's now). Above what
            the cores take, the total is a range: idle machine to this load.
        files : list of Path, optional
            The timings files the estimate rests on (default: the committed ones).
        """
        if not self.runs:
            return ["nothing to run: every run of this grid is done"]
        out = []
        for solver, (runs, seconds, unknown) in sorted(self.per_solver.items()):
            known = f"{format_duration(seconds)} of compute" if runs > unknown else ""
            note = f"{unknown} of unknown time" if unknown else ""
            out.append(f"  {solver:20s} {runs:6d} runs  " + "; ".join(x for x in (known, note) if x))
        out.append(basis(timing_files() if files is None else files))
        if self.unknown == self.runs:
            out.append(f"{self.runs} runs, estimated wall time unknown (no committed timings "
                       "of these configurations)")
            return out
        load, cores = machine_load() if load is None else load
        factor = slowdown(n_jobs, load, cores, n_threads)
        wall = format_duration(self.wall(n_jobs))
        if factor > 1.1:  # a range: what the timings say, and that much slower at this load
            wall = (f"{wall} (idle machine) to {format_duration(self.wall(n_jobs) * factor)} "
                    f"(load {load:.1f} on {cores} cores now)")
        total = f"{self.runs} runs, estimated wall time {wall} at -j {n_jobs}"
        if self.unknown:
            total += f" plus {self.unknown} runs of unknown time"
        out.append(total)
        return out

    def summary(self, n_jobs: int) -> str:
        """``~2 h 10 min at -j 2 (12 runs of unknown time)``."""
        if not self.runs:
            return "nothing to run"
        if self.unknown == self.runs:
            return "time unknown (no committed timings)"
        text = f"~{format_duration(self.wall(n_jobs))} at -j {n_jobs}"
        return text + (f" + {self.unknown} runs of unknown time" if self.unknown else "")


def estimate_specs(specs: Iterable[dict], timings: dict[tuple, float] | None = None) -> Estimate:
    """Estimate for expanded run specs (``gfbench run --dry-run``)."""
    timings = load_timings() if timings is None else timings
    estimate = Estimate()
    for spec in specs:
        solver = spec.get("solver_name", spec["solver"])
        key = (spec.get("task_name", spec["task"]), config_label(spec["task_params"]), solver,
               config_label(spec["solver_params"]))
        estimate.add(spec.get("solver_name", spec["solver"]), timings.get(key))
    return estimate


def estimate_profile(data: dict, index: dict, timings: dict[tuple, float] | None = None
                     ) -> Estimate:
    """Estimate for a parsed profile without importing any plugin (``gfbench list``).

    Parameters are the profile's grids merged over the index's default grids,
    as :func:`execution.grid.expand` does; no validation. A run that several
    ``[[grid]]`` blocks ask for (same task, parameters, solver, parameters,
    seed and times) counts once, as the expansion runs it once.
    """
    timings = load_timings() if timings is None else timings
    estimate = Estimate()
    run = data.get("run", {}) or {}
    default_seeds = parse_seeds(run.get("seeds", 1))
    blocks = list(data.get("grid", []) or [])
    if "tasks" in data or "solvers" in data:
        blocks.append({"tasks": data.get("tasks", {}), "solvers": data.get("solvers", {})})
    seen: set[tuple] = set()
    for block in blocks:
        seeds = parse_seeds(block["seeds"]) if "seeds" in block else default_seeds
        for task, task_grid in (block.get("tasks") or {}).items():
            task_grid = dict(task_grid or {})
            times = task_grid.pop("times", index["tasks"].get(task, {}).get("default_times"))
            times = tuple(sorted({float(t) for t in _as_list(times)}))
            for task_params in _product(index["tasks"].get(task, {}).get("parameters", {}),
                                        task_grid):
                for solver, solver_grid in (block.get("solvers") or {}).items():
                    defaults = index["solvers"].get(solver, {}).get("parameters", {})
                    for solver_params in _product(defaults, solver_grid or {}):
                        key = (task, config_label(task_params), solver,
                               config_label(solver_params))
                        for seed in seeds:
                            if (key, seed, times) not in seen:
                                seen.add((key, seed, times))
                                estimate.add(solver, timings.get(key))
    return estimate


def _as_list(value: Any) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _product(defaults: dict[str, list], grid: dict[str, Any]) -> list[dict]:
    merged = {k: list(v) for k, v in defaults.items()}
    merged.update({k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()})
    keys = sorted(merged)
    return [dict(zip(keys, values)) for values in itertools.product(*(merged[k] for k in keys))]
