"""Run profiles: TOML or YAML files describing a grid.

Schema (TOML shown; YAML has the same keys)::

    description = "..."
    [run]                       # all optional
    seeds = 3                   # N (0..N-1) or a list of seeds
    timeout = 600               # seconds per run (hard)
    n_jobs = 2
    metrics = ["symkl", "energy"]
    device = "cpu"              # cpu | cuda
    [tasks.ou]                  # task name -> parameter grid (+ optional times)
    dim = [1, 2, 4]
    times = [0.5, 0.9]
    [solvers.em]                # solver name -> parameter grid
    n_particles = [1000]

Several ``[[grid]]`` blocks, each with its own ``tasks`` and ``solvers``
tables, cross only within a block (e.g. JKO settings per task); a block may
set its own ``seeds`` and ``metrics`` (``--seeds`` / ``--metrics`` on the command line
override every block).
Unknown keys are errors, never ignored. A memory size (a profile's
``max_memory``, ``--max-memory``) is read by :func:`parse_size`, here because
both the profiles and the options need it.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from execution.grid import BadInput, GridBlock, RunConfig, parse_seeds

BUILTIN_DIR = Path(__file__).resolve().parent / "profiles"
TOP_KEYS = {"description", "run", "tasks", "solvers", "grid"}
RUN_KEYS = {"seeds", "timeout", "n_jobs", "metrics", "device", "seed_entropy", "backend",
            "scheduler", "retry_failed", "n_threads", "max_memory"}


def builtin_profiles() -> dict[str, Path]:
    """Built-in profile names → files."""
    return {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.toml"))}


def read_profile(name_or_path: str) -> dict[str, Any]:
    """Parse a profile by built-in name or file path into a dict."""
    path = Path(name_or_path)
    if not path.is_file():
        builtin = builtin_profiles()
        if name_or_path not in builtin:
            raise BadInput(f"no profile {name_or_path!r}: not a file and not one of "
                           f"{', '.join(builtin)}")
        path = builtin[name_or_path]
    try:
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"cannot parse profile {str(path)!r}: {first}") from None
    if not isinstance(data, dict):
        raise BadInput(f"profile {str(path)!r} must be a table/mapping at the top level")
    return data


def _grid_table(where: str, table: Any) -> dict[str, dict[str, list]]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise BadInput(f"profile: {where} must be a table of name -> parameter grid")
    out = {}
    for name, params in table.items():
        params = params or {}
        if not isinstance(params, dict):
            raise BadInput(f"profile: {where}.{name} must be a table of parameter -> values")
        out[name] = {k: (list(v) if isinstance(v, (list, tuple)) else [v])
                     for k, v in params.items()}
        if any(len(v) == 0 for v in out[name].values()):
            raise BadInput(f"profile: {where}.{name} has an empty value list")
    return out


def to_config(data: dict[str, Any]) -> RunConfig:
    """Validate a parsed profile and turn it into a :class:`RunConfig`."""
    unknown = set(data) - TOP_KEYS
    if unknown:
        raise BadInput(f"profile: unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
    run = data.get("run", {}) or {}
    if not isinstance(run, dict) or set(run) - RUN_KEYS:
        bad = sorted(set(run) - RUN_KEYS) if isinstance(run, dict) else run
        raise BadInput(f"profile: unknown [run] key(s) {bad}; allowed: {sorted(RUN_KEYS)}")
    blocks = []
    if "tasks" in data or "solvers" in data:
        blocks.append(GridBlock(_grid_table("tasks", data.get("tasks")),
                                _grid_table("solvers", data.get("solvers"))))
    for i, block in enumerate(data.get("grid", []) or []):
        if not isinstance(block, dict) or set(block) - {"tasks", "solvers", "seeds", "metrics"}:
            raise BadInput(f"profile: grid block {i} may only hold 'tasks', 'solvers', "
                           "'seeds' and 'metrics'")
        seeds = parse_seeds(block["seeds"]) if "seeds" in block else None
        metrics = _metric_list(f"grid[{i}].metrics", block["metrics"]) \
            if "metrics" in block else None
        blocks.append(GridBlock(_grid_table(f"grid[{i}].tasks", block.get("tasks")),
                                _grid_table(f"grid[{i}].solvers", block.get("solvers")), seeds,
                                metrics))
    config = RunConfig(blocks=blocks)
    if "seeds" in run:
        config.seeds = parse_seeds(run["seeds"])
    if "timeout" in run:
        value = run["timeout"]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                or value == float("inf"):
            raise BadInput(f"profile: run.timeout must be a positive number, got {value!r}")
        config.timeout = float(value)
    for key in ("n_jobs", "seed_entropy", "n_threads"):
        if key in run:
            value = run[key]
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise BadInput(f"profile: run.{key} must be a positive integer, got {value!r}")
            setattr(config, key, value)
    if "retry_failed" in run:
        if not isinstance(run["retry_failed"], bool):
            raise BadInput(f"profile: run.retry_failed must be true or false, got "
                           f"{run['retry_failed']!r}")
        config.retry_failed = run["retry_failed"]
    if "metrics" in run:
        config.metrics = _metric_list("run.metrics", run["metrics"])
    for key in ("device", "backend", "scheduler"):
        if key in run:
            if not isinstance(run[key], str):
                raise BadInput(f"profile: run.{key} must be a string, got {run[key]!r}")
            setattr(config, key, run[key])
    if "max_memory" in run:
        config.max_memory = parse_size(run["max_memory"])
    return config


def parse_size(text: str | int) -> int:
    """``4G``, ``512M``, ``1.5GB`` or a number of bytes -> bytes (BadInput otherwise)."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    raw = str(text).strip().upper().removesuffix("B").removesuffix("I")
    unit = raw[-1] if raw and raw[-1] in units else ""
    try:
        value = float(raw[:-1] if unit else raw) * units[unit]
    except ValueError:
        raise BadInput(f"bad memory size {text!r}: expected e.g. 4G, 512M or bytes") from None
    if not value >= 2**27 or value != value or value > 2**50:
        raise BadInput(f"memory size {text!r} must be at least 128M")
    return int(value)


def _metric_list(where: str, metrics: Any) -> list[str]:
    """A non-empty list of metric names (checked against the registry by ``expand``)."""
    if not isinstance(metrics, list) or not metrics \
            or not all(isinstance(m, str) for m in metrics):
        raise BadInput(f"profile: {where} must be a list of metric names, got {metrics!r}")
    return metrics
