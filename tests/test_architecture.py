"""The project's shape: its import graph and sizes, read from the source (ast, not import).

Layers, highest first: cli → analysis → execution → solvers → metrics → tasks →
numerics (``packages`` in pyproject.toml, in that order). A module may import
modules of its own package and of any package below it, never above: nothing
imports the command line, and analysis may import execution but not the
reverse. Every import counts, including those inside functions (the lazy
imports that keep ``gfbench --help`` fast) and under ``TYPE_CHECKING``, and no
two modules may import each other, directly or through others.

Sizes: no package above :data:`MAX_PACKAGE_SHARE` of the non-test code and no
module above :data:`MAX_MODULE_LINES` lines, except the entries of
:data:`SIZE_EXCEPTIONS`, each with its reason; an exception that is no longer
needed fails too, so the list only shrinks.

The checkers are plain functions of a graph or a source tree, tested on small
synthetic ones (a cycle, an upward import, a lazy relative import) so that a
checker that always passes would be caught. Run on the tree before the split of
``runners/`` they found its three cycles (cli ↔ profiles, estimate ↔ store,
leaderboard ↔ report) and 42.6 % of the code in it.

Moving code must change no output: run ids hash plugin code only, and the
committed results.csv files and leaderboard are reproduced byte for byte.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: the packages, highest layer first
LAYERS = ("cli", "analysis", "execution", "solvers", "metrics", "tasks", "numerics")
MAX_PACKAGE_SHARE = 0.35
MAX_MODULE_LINES = 700

#: package or module (path relative to the root) -> why it may exceed its limit
SIZE_EXCEPTIONS = {
}


# --- reading the source ---------------------------------------------------------------------
def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of ``packages`` under ``root``.

    A package's ``__init__.py`` is the package's own name.
    """
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if "__pycache__" in parts:
                continue
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``module`` (source ``path``) imports, anywhere in it.

    ``from a import b`` names module ``a.b`` when that is a module, else ``a``;
    ``import a.b.c`` names its longest prefix that is a module; relative imports
    are resolved against ``module``'s package.
    """
    package = module if _is_package(path) else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            candidates = [[alias.name] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(filter(None, [*anchor, base]))
            candidates = [[f"{base}.{alias.name}", base] for alias in node.names]
        else:
            continue
        for names in candidates:
            for name in names:
                hit = _longest_module_prefix(name, modules)
                if hit:
                    found.add(hit)
                    break
    found.discard(module)
    return found


def _longest_module_prefix(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root, packages)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


# --- the checkers ---------------------------------------------------------------------------
def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``: its strongly connected components of more than one
    module, and modules that import themselves (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    found.append(sorted(component))
    return sorted(found)


def upward_imports(graph: dict[str, set[str]], layers: tuple[str, ...]) -> list[tuple[str, str]]:
    """Imports of a higher layer's module by a lower layer's (``layers`` highest first), and
    of or by a module outside every layer."""
    def rank(module: str) -> int:
        top = module.split(".")[0]
        return layers.index(top) if top in layers else -1

    return sorted((a, b) for a, targets in graph.items() for b in targets
                  if rank(a) < 0 or rank(b) < 0 or rank(b) < rank(a))


def line_counts(modules: dict[str, Path], root: Path) -> dict[str, int]:
    """Lines per module, keyed by its path relative to ``root``."""
    return {path.relative_to(root).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
            for path in modules.values()}


def package_shares(counts: dict[str, int]) -> dict[str, float]:
    """Each top-level package's share of all the lines."""
    total = sum(counts.values())
    shares: dict[str, float] = {}
    for path, n in counts.items():
        package = path.split("/")[0]
        shares[package] = shares.get(package, 0.0) + n / total
    return shares


def oversized(counts: dict[str, int], max_share: float, max_lines: int) -> dict[str, str]:
    """Packages above ``max_share`` of the lines and modules above ``max_lines``: what, how big."""
    found = {package: f"{share:.1%} of {sum(counts.values())} lines"
             for package, share in package_shares(counts).items() if share > max_share}
    found.update({path: f"{n} lines" for path, n in counts.items() if n > max_lines})
    return found


# --- the project ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, LAYERS)


@pytest.fixture(scope="module")
def counts() -> dict[str, int]:
    return line_counts(project_modules(ROOT, LAYERS), ROOT)


def test_the_layers_are_the_installed_packages_in_order():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert tuple(config["tool"]["setuptools"]["packages"]) == LAYERS
    assert config["project"]["scripts"]["gfbench"].split(":")[0].split(".")[0] == LAYERS[0]
    assert not (ROOT / "runners").exists()


def test_no_module_imports_another_that_imports_it_back(graph):
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the whole project was read
    assert cycles(graph) == []


def test_no_layer_imports_a_layer_above_it(graph):
    assert upward_imports(graph, LAYERS) == []
    # the allowed direction is there: the rule is not vacuous
    assert any(b.startswith("execution.") for a, targets in graph.items() if
               a.startswith("analysis.") for b in targets)


def test_run_ids_hash_only_plugin_code_never_the_packages_that_run_it():
    """A run id covers its plugins' module closure: moving or editing cli, analysis or
    execution must never make committed runs stale."""
    from execution import registry

    index = registry.index()
    modules = {entry["module"] for kind in ("tasks", "solvers", "metrics")
               for entry in index[kind].values()}
    assert len(modules) > 10
    for module in sorted(modules):
        packages = {name.split(".")[0] for name in registry.module_closure(module)}
        assert packages <= set(registry.PROJECT_PACKAGES), (module, packages)


def test_no_package_or_module_is_too_big_beyond_the_listed_exceptions(counts):
    found = oversized(counts, MAX_PACKAGE_SHARE, MAX_MODULE_LINES)
    new = {what: size for what, size in found.items() if what not in SIZE_EXCEPTIONS}
    assert new == {}, f"split these (or list them, with the reason, in SIZE_EXCEPTIONS): {new}"


def test_every_size_exception_is_still_needed(counts):
    found = oversized(counts, MAX_PACKAGE_SHARE, MAX_MODULE_LINES)
    assert [what for what in SIZE_EXCEPTIONS if what not in found] == [], \
        "within its limit now: remove it from SIZE_EXCEPTIONS"


# --- the checkers on synthetic inputs -----------------------------------------------------------
def test_cycles_finds_every_cycle_and_nothing_else():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"},
             "g": {"h"}, "h": {"g", "a"}}
    assert cycles(graph) == [["a", "b", "c"], ["e"], ["g", "h"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) == []


def test_upward_imports_names_each_import_against_the_order():
    layers = ("top", "middle", "bottom")
    graph = {"top.x": {"middle.y", "bottom.z", "top.w"}, "middle.y": {"top.x", "bottom.z"},
             "bottom.z": {"middle.y"}, "top.w": set(), "stray.v": {"bottom.z"}}
    assert upward_imports(graph, layers) == [("bottom.z", "middle.y"), ("middle.y", "top.x"),
                                             ("stray.v", "bottom.z")]


def test_imports_inside_functions_relative_and_from_packages_are_all_read(tmp_path):
    files = {
        "top/__init__.py": '"""top"""\n',
        "top/cmd.py": "import json\nfrom low import util\n",
        "low/__init__.py": "",
        "low/util.py": ("from typing import TYPE_CHECKING\n"
                        "from . import helpers\n"
                        "if TYPE_CHECKING:\n    from low.types import T\n"
                        "def late():\n    from top.cmd import main  # lazy, still an import\n"),
        "low/helpers.py": "import low.types as t\nfrom .util import late\n",
        "low/types.py": "T = int\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, ("top", "low"))
    assert graph == {"top": set(), "top.cmd": {"low.util"}, "low": set(),
                     "low.util": {"low.helpers", "low.types", "top.cmd"},
                     "low.helpers": {"low.types", "low.util"}, "low.types": set()}
    assert cycles(graph) == [["low.helpers", "low.util", "top.cmd"]]
    assert upward_imports(graph, ("top", "low")) == [("low.util", "top.cmd")]


def test_sizes_flag_big_packages_and_long_modules():
    counts = {"big/a.py": 500, "big/b.py": 300, "small/c.py": 200, "small/d.py": 120}
    assert package_shares(counts) == pytest.approx({"big": 800 / 1120, "small": 320 / 1120})
    assert oversized(counts, 0.35, 400) == {"big": "71.4% of 1120 lines", "big/a.py": "500 lines"}
    assert oversized(counts, 0.8, 500) == {}


# --- moving code changes no output ------------------------------------------------------------
def _exported(results: Path, tmp_path: Path) -> Path:
    """A copy of ``results``' run files, exported by the current code."""
    import shutil

    from execution import store

    out = tmp_path / results.name
    shutil.copytree(results / "runs", store.runs_dir(out))
    store.export(out)
    return out


@pytest.mark.parametrize("name", ["baseline-smoke", "gpu-h100"])
def test_the_committed_results_csv_is_reproduced_byte_for_byte(tmp_path, name):
    committed = ROOT / "results" / name
    out = _exported(committed, tmp_path)
    for file in ("results.csv", "timings.csv"):
        assert (out / file).read_bytes() == (committed / file).read_bytes(), file


@pytest.mark.slow  # ~15 s on 2 cores: 1,412 run files, read twice
def test_the_committed_leaderboard_and_every_results_csv_are_reproduced(tmp_path):
    from analysis.leaderboard import write_leaderboard

    names = ("standard", "large", "study", "nongaussian", "beyond")
    for name in names:
        out = _exported(ROOT / "results" / name, tmp_path)
        assert (out / "results.csv").read_bytes() == \
            (ROOT / "results" / name / "results.csv").read_bytes(), name
    write_leaderboard([tmp_path / name for name in names], tmp_path)
    for file in ("leaderboard.csv", "leaderboard.md"):
        assert (tmp_path / file).read_bytes() == (ROOT / "results" / file).read_bytes(), file
