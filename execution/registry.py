"""Discovery of tasks, solvers and metrics.

Built-in plugins are found by importing every module of the ``tasks``,
``solvers`` and ``metrics`` packages. A user's own solver or task outside the
tree is named by its import path, ``"package.module:ClassName"``, anywhere a
name is accepted (it must be importable in the worker processes too).

Importing every plugin costs seconds (torch, scikit-learn, scipy.stats), so
the static facts about them — names, modules, versions, parameter grids,
capabilities, metric directions — are kept in an *index* (:func:`index`),
cached on disk under a digest of the plugin sources: ``gfbench list``,
``--help``, grid expansion and the readers use it, and only the plugins a
grid names are imported (:func:`get_task`, :func:`get_solver`).
"""
from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import io
import pkgutil
import tokenize
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import json
import os
import sys
import tempfile

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


#: directories appended to ``sys.path`` for plugin modules (handed on to run processes)
_IMPORT_PATHS: list[str] = []


def import_paths() -> list[str]:
    """The directories this process added to ``sys.path`` for plugins."""
    return list(_IMPORT_PATHS)


def add_import_paths(paths) -> None:
    """Append ``paths`` to ``sys.path`` (once each).

    Appended, never prepended: a directory of the user's must not shadow an
    installed module or the project's own packages.
    """
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
        if path not in _IMPORT_PATHS:
            _IMPORT_PATHS.append(path)
    importlib.invalidate_caches()


def _importable_from_cwd(module_name: str) -> None:
    """Make a plugin module in the current directory importable, as ``python -m`` would."""
    top = module_name.split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        add_import_paths([os.getcwd()])


def _load_path(ref: str, base: type) -> type:
    module_name, _, attr = ref.partition(":")
    _importable_from_cwd(module_name)
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise KeyError(f"cannot import {ref!r}: {exc}") from None
    if not (inspect.isclass(obj) and issubclass(obj, base)):
        raise KeyError(f"{ref!r} is not a {base.__name__} subclass")
    name = getattr(obj, "name", None)
    if not (isinstance(name, str) and name):
        # the base classes' own messages and the rows name it: refused here, not mid-grid
        raise KeyError(f"plugin {ref!r} has no name: give the class one, e.g. "
                       f"name = \"{attr.lower()}\"")
    return obj


def _valid_path(ref: str) -> None:
    module_name, _, attr = ref.partition(":")
    parts = module_name.split(".")
    if not module_name or not attr or not all(p.isidentifier() for p in parts) \
            or not attr.isidentifier():
        raise KeyError(f"{ref!r} is not a plugin path: expected package.module:ClassName")


def _get(kind: str, name: str, base: type):
    if ":" in name:
        _valid_path(name)
        return _load_path(name, base)
    entry = index()[kind].get(name)
    if entry is None:
        raise KeyError(f"unknown {kind[:-1]} {name!r}; known: {', '.join(index()[kind])}")
    return getattr(importlib.import_module(entry["module"]), entry["qualname"])


def display_name(kind: str, ref: str, cls: type) -> str:
    """What rows and labels call a task or solver (``kind``: "tasks" or "solvers").

    A built-in's registry name; for a plugin path its class's ``name``, unless
    that is missing or a built-in's (a subclass that kept its parent's name
    would be pooled with it), then the path itself.
    """
    if ":" not in ref:
        return ref
    name = getattr(cls, "name", None)
    return name if isinstance(name, str) and name and name not in index()[kind] else ref


def get_task(name: str) -> type[Task]:
    """A task class by registry name or ``module:Class`` path (KeyError if unknown).

    Imports only that task's module.
    """
    return _get("tasks", name, Task)


def get_solver(name: str) -> type[Solver]:
    """A solver class by registry name or ``module:Class`` path (KeyError if unknown).

    Imports only that solver's module.
    """
    return _get("solvers", name, Solver)


def get_metric(name: str) -> Metric:
    """A metric by name (KeyError if unknown)."""
    try:
        return metrics()[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(metrics())}") from None


#: packages whose modules are part of a plugin's code (a runner change does not change numbers)
PROJECT_PACKAGES = ("tasks", "solvers", "metrics", "numerics")
#: display-only text: class attributes and keyword arguments that produce no number
DISPLAY_NAMES = ("description", "labels", "label", "requires")


def code_hash(obj: Any) -> str:
    """Short sha256 of the code behind a task or solver class or a :class:`Metric`.

    It covers the module that defines ``obj`` and every module of
    :data:`PROJECT_PACKAGES` it imports, directly or not (a task's shared
    numerical core, a metric's task helpers), so an edit anywhere in that
    code makes the runs it produced stale. Comments, docstrings, blank lines
    and trailing spaces are not part of it: they produce no number, and
    recording a tuning study in a docstring must not cost a rerun.
    """
    module = obj.fn.__module__ if isinstance(obj, Metric) else obj.__module__
    return _closure_hash(module)


@lru_cache(maxsize=None)
def _closure_hash(module: str) -> str:
    digest = hashlib.sha256()
    for name in sorted(module_closure(module)):
        digest.update(name.encode() + b"\0" + normalised_source(_module_path(name)).encode())
    return digest.hexdigest()[:12]


#: the project's root: modules under it are the project's own code wherever they live
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def module_closure(module: str) -> set[str]:
    """``module`` and the own-tree modules it imports, transitively (by reading, not importing).

    Own tree: the project's packages (:data:`PROJECT_PACKAGES`) and any other
    module whose source lies under the project root or beside ``module``'s
    top-level package (a plugin's helper module), never an installed package
    or the standard library. So editing a helper a plugin imports changes
    the plugin's run ids too.
    """
    roots = (PROJECT_ROOT, _tree_root(module.split(".")[0]))
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_path(name)
        if path is None:
            continue
        seen.add(name)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                todo.extend(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo.append(node.module)
                todo.extend(f"{node.module}.{alias.name}" for alias in node.names)
        todo = [n for n in todo if n == module or n.split(".")[0] in PROJECT_PACKAGES
                or _own_tree(n.split(".")[0], roots)]
    return seen


@lru_cache(maxsize=None)
def _tree_root(top: str) -> Path | None:
    """The directory holding top-level module or package ``top`` (None if not a source file)."""
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: found, not imported
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    origin = Path(spec.origin).resolve()
    return origin.parent.parent if origin.name == "__init__.py" else origin.parent


@lru_cache(maxsize=1)
def _installed_roots() -> tuple[Path, ...]:
    """Where the interpreter and installed packages live (never a plugin's own tree)."""
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             *sysconfig.get_paths().values()}
    return tuple(Path(p).resolve() for p in paths if p)


def _own_tree(top: str, roots: tuple[Path | None, ...]) -> bool:
    """Whether top-level module ``top`` is source in one of ``roots`` (not an installed one:
    a plugin in the home directory must not sweep in a standard library installed there)."""
    where = _tree_root(top)
    if where is None or any(part in ("site-packages", "dist-packages") for part in where.parts):
        return False
    if any(where == p or p in where.parents for p in _installed_roots()):
        return False
    return any(root is not None and (where == root or root in where.parents) for root in roots)


def _module_path(name: str) -> Path | None:
    """Source file of a module without importing it (None if there is none)."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


@lru_cache(maxsize=None)
def normalised_source(path: Path | None) -> str:
    """The code of a source file without comments, docstrings, display text and blank lines.

    Comments are located by :mod:`tokenize`; docstrings, and the values of
    class attributes and keyword arguments named in :data:`DISPLAY_NAMES`
    (a solver's ``description`` and ``labels``, a metric's ``label``), by
    :mod:`ast` (both give the same positions on every Python version). They
    are blanked in the text; what remains is compared line by line, stripped
    on the right.
    """
    if path is None:
        return ""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    spans = []  # (start line, start col, end line, end col), 1-based lines
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            spans.append((*token.start, *token.end))
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                targets = item.targets if isinstance(item, ast.Assign) else \
                    [item.target] if isinstance(item, ast.AnnAssign) and item.value else []
                if any(isinstance(t, ast.Name) and t.id in DISPLAY_NAMES for t in targets):
                    spans.append((item.lineno, item.col_offset, item.end_lineno,
                                  item.end_col_offset))
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg in DISPLAY_NAMES:
                    value = keyword.value
                    spans.append((value.lineno, value.col_offset, value.end_lineno,
                                  value.end_col_offset))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                doc = body[0]
                spans.append((doc.lineno, doc.col_offset, doc.end_lineno, doc.end_col_offset))
    for l0, c0, l1, c1 in sorted(spans, reverse=True):
        if l0 == l1:
            lines[l0 - 1] = lines[l0 - 1][:c0] + lines[l0 - 1][c1:]
        else:
            lines[l0 - 1] = lines[l0 - 1][:c0]
            for i in range(l0, l1 - 1):
                lines[i] = ""
            lines[l1 - 1] = lines[l1 - 1][c1:]
    return "\n".join(line.rstrip() for line in lines if line.strip())


# --- the index ---------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where gfbench caches derived data: ``$GFBENCH_CACHE`` or ``~/.cache/gfbench``."""
    return Path(os.environ.get("GFBENCH_CACHE") or Path.home() / ".cache" / "gfbench")


def _sources_digest() -> str:
    """sha256 over the plugin packages' source files (paths and bytes) and the Python version."""
    digest = hashlib.sha256(sys.version.encode())
    for package in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for directory in spec.submodule_search_locations:
            for path in sorted(Path(directory).glob("*.py")):
                digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        items = [_jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (frozenset, set)) else items
    if isinstance(value, float) and value != value:
        return None
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def _build_index() -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {"tasks": {}, "solvers": {}, "metrics": {}}
    for name, cls in tasks().items():
        out["tasks"][name] = _jsonable({
            "module": cls.__module__, "qualname": cls.__qualname__, "version": cls.version,
            "description": cls.description, "parameters": cls.parameters,
            "default_times": cls.default_times, "bounds": cls.bounds,
            "rankings": cls.rankings(), "replicate_parameters": cls.replicate_parameters,
            "stationary": cls.stationary})
    for name, cls in solvers().items():
        out["solvers"][name] = _jsonable({
            "module": cls.__module__, "qualname": cls.__qualname__, "version": cls.version,
            "description": cls.description, "parameters": cls.parameters,
            "capabilities": cls.capabilities, "labels": cls.labels})
    for name, metric in metrics().items():
        out["metrics"][name] = _jsonable({
            "module": metric.fn.__module__, "version": metric.version,
            "default": metric.default, "label": metric.title,
            "description": metric.description, "lower_is_better": metric.lower_is_better,
            "lower_bound": metric.lower_bound, "requires": metric.requires})
    return out


@lru_cache(maxsize=None)
def index() -> dict[str, dict[str, dict[str, Any]]]:
    """Static facts about every built-in task, solver and metric.

    Built by importing them all once per version of their sources, then read
    from ``cache_dir()/index-<digest>.json`` (a cache that cannot be written
    only costs the imports again).
    """
    path = cache_dir() / f"index-{_sources_digest()}.json"
    try:
        cached = json.loads(path.read_text())
        if _valid_index(cached):
            return cached
    except (OSError, ValueError, RecursionError):
        pass  # unreadable or of the wrong shape: rebuilt and rewritten below
    built = _build_index()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(built, handle)
        os.replace(tmp, path)
    except OSError:
        pass
    return built


#: what every index entry must hold for the readers (list, grid expansion, leaderboard)
_ENTRY_KEYS = {"tasks": ("module", "qualname", "version", "parameters", "rankings"),
               "solvers": ("module", "qualname", "version", "parameters", "capabilities"),
               "metrics": ("module", "version", "lower_is_better", "default")}


def _valid_index(index_: Any) -> bool:
    """Whether a cached index has the shape :func:`_build_index` writes, naming modules that
    exist (a hand-edited or foreign file is rebuilt, never trusted)."""
    if not isinstance(index_, dict) or set(index_) != set(_ENTRY_KEYS):
        return False
    for kind, keys in _ENTRY_KEYS.items():
        entries = index_[kind]
        if not isinstance(entries, dict):
            return False
        for entry in entries.values():
            if not (isinstance(entry, dict) and all(k in entry for k in keys)
                    and isinstance(entry["module"], str)):
                return False
            if kind != "metrics" and not isinstance(entry["parameters"], dict):
                return False
            if _module_path(entry["module"]) is None:
                return False
    return True


def metric_info(name: str) -> dict[str, Any] | None:
    """A built-in metric's index entry (None if unknown)."""
    return index()["metrics"].get(name)


def metric_code(name: str) -> str:
    """Code hash of a built-in metric, from its module (no import)."""
    return _closure_hash(index()["metrics"][name]["module"])
