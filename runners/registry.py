"""Discovery of tasks, solvers and metrics.

Built-in plugins are found by importing every module of the ``tasks``,
``solvers`` and ``metrics`` packages. A user's own solver or task outside the
tree is named by its import path, ``"package.module:ClassName"``, anywhere a
name is accepted (it must be importable in the worker processes too).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
from pathlib import Path
import pkgutil
from functools import lru_cache
from types import ModuleType

from metrics.base import Metric
from solvers.base import Solver
from tasks.base import Task

_SKIP_MODULES = {"base"}


def _modules(package: str) -> list[ModuleType]:
    pkg = importlib.import_module(package)
    return [importlib.import_module(f"{package}.{info.name}")
            for info in pkgutil.iter_modules(pkg.__path__)
            if info.name not in _SKIP_MODULES and not info.name.startswith("_")]


def _classes(package: str, base: type) -> dict[str, type]:
    found: dict[str, type] = {}
    for module in _modules(package):
        for obj in vars(module).values():
            if (inspect.isclass(obj) and issubclass(obj, base) and obj is not base
                    and obj.__module__ == module.__name__ and not inspect.isabstract(obj)
                    and isinstance(getattr(obj, "name", None), str)):
                if obj.name in found:
                    raise RuntimeError(f"two {package} named {obj.name!r}")
                found[obj.name] = obj
    return dict(sorted(found.items()))


@lru_cache(maxsize=None)
def tasks() -> dict[str, type[Task]]:
    """All built-in tasks by name."""
    return _classes("tasks", Task)


@lru_cache(maxsize=None)
def solvers() -> dict[str, type[Solver]]:
    """All built-in solvers by name."""
    return _classes("solvers", Solver)


@lru_cache(maxsize=None)
def metrics() -> dict[str, Metric]:
    """All built-in metrics by name."""
    found: dict[str, Metric] = {}
    for module in _modules("metrics"):
        for obj in vars(module).values():
            if isinstance(obj, Metric):
                found[obj.name] = obj
    return dict(sorted(found.items()))


def _load_path(ref: str, base: type) -> type:
    module_name, _, attr = ref.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"cannot import {ref!r}: {exc}") from None
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        raise KeyError(f"{ref!r} is not a {base.__name__} subclass")
    return obj


def get_task(name: str) -> type[Task]:
    """A task class by registry name or ``module:Class`` path (KeyError if unknown)."""
    if ":" in name:
        return _load_path(name, Task)
    try:
        return tasks()[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(tasks())}") from None


def get_solver(name: str) -> type[Solver]:
    """A solver class by registry name or ``module:Class`` path (KeyError if unknown)."""
    if ":" in name:
        return _load_path(name, Solver)
    try:
        return solvers()[name]
    except KeyError:
        raise KeyError(f"unknown solver {name!r}; known: {', '.join(solvers())}") from None


def get_metric(name: str) -> Metric:
    """A metric by name (KeyError if unknown)."""
    try:
        return metrics()[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(metrics())}") from None


@lru_cache(maxsize=None)
def code_hash(cls: type) -> str:
    """Short sha256 of the source file that defines ``cls``.

    Part of the run id, so editing a solver invalidates its cached runs.
    """
    path = inspect.getsourcefile(cls)
    data = Path(path).read_bytes() if path else cls.__qualname__.encode()
    return hashlib.sha256(data).hexdigest()[:12]
