"""One generation counts: an edit followed by a rerun replaces the old numbers, never pools them.

A run id hashes the code of the task, the solver and the metrics, including
helper modules a plugin imports from its own tree; readers keep, for each
(task configuration, solver configuration, seed), only the newest code
generation, and ``prune`` removes only the stale files it can parse.
"""
from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from execution import registry, store

PLUGIN = '''
import numpy as np
from tasks.ou import OrnsteinUhlenbeck as OU
from {helper} import SHIFT


class Shifted(OU):
    """OU whose initial mean is moved by SHIFT (a plugin edited between two runs)."""

    name = "shifted_ou"

    def sample_initial(self, n, rng):
        return super().sample_initial(n, rng) + SHIFT
'''


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """A plugin task module and the helper module it imports, importable from tmp_path."""
    helper = f"gen_helper_{tmp_path.name.replace('-', '_')}"
    module = f"gen_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{helper}.py").write_text("SHIFT = 0.0\n")
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN.format(helper=helper)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{__import__('os').environ.get('PYTHONPATH', '')}")
    yield tmp_path, module, helper
    for name in (module, helper):
        sys.modules.pop(name, None)


def _reset_hashes():
    registry._closure_hash.cache_clear()
    registry.normalised_source.cache_clear()
    registry._tree_root.cache_clear()
    importlib.invalidate_caches()


def test_a_helper_module_of_a_plugin_is_part_of_its_run_id(plugin_dir):
    path, module, helper = plugin_dir
    _reset_hashes()
    assert helper in registry.module_closure(module)
    before = registry._closure_hash(module)
    (path / f"{helper}.py").write_text("SHIFT = 0.5\n")
    _reset_hashes()
    assert registry._closure_hash(module) != before


def test_a_plugin_edit_and_a_rerun_leave_one_generation(gfbench, plugin_dir):
    path, module, helper = plugin_dir
    out = path / "results"
    run = ("run", "--task", f"{module}:Shifted", "-P", f"{module}:Shifted.dim=1", "--times", "0.2",
           "--seeds", "2", "--solver", "exact", "-P", "exact.n_samples=256",
           "--metrics", "energy,symkl", "--quiet", "--no-report", "--out", out)
    _reset_hashes()
    code, _, err = gfbench(*run)
    assert code == 0, err
    (path / f"{helper}.py").write_text("SHIFT = 0.5  # edited\nUNUSED = 1\n")
    _reset_hashes()
    sys.modules.pop(helper, None)
    sys.modules.pop(module, None)
    code, _, err = gfbench(*run)
    assert code == 0, err
    assert len(list(store.runs_dir(out).glob("*.json"))) == 4  # two generations on disk
    frame, _, stale = store.load_current(out)
    assert len(frame) == 2 and len(stale) == 2  # one generation of 2 seeds counts
    assert frame["run_id"].nunique() == 2
    assert set(frame["task_code"]) == {registry._closure_hash(module)}
    exported = store.export(out)
    assert len(exported) == 2
    assert len(list(csv_rows(out / "results.csv"))) == 2
    # a user's notes.json and a directory in runs/ are not run files: prune leaves them
    (store.runs_dir(out) / "notes.json").write_text(json.dumps({"mine": True}))
    (store.runs_dir(out) / "sub.json").mkdir()
    code, stdout, stderr = gfbench("prune", out)
    assert code == 0 and "2 of 4 run files are stale" in stderr
    assert stdout.count("older code generation") == 2
    code, _, _ = gfbench("prune", out, "--delete")
    assert code == 0
    assert (store.runs_dir(out) / "notes.json").is_file() and (store.runs_dir(out) / "sub.json").is_dir()
    assert len(list(store.runs_dir(out).glob("*.json"))) == 4  # 2 runs, notes.json, sub.json
    assert store.load_current(out)[2] == []


def csv_rows(path):
    import csv

    with path.open(newline="") as handle:
        yield from csv.DictReader(handle)


def test_runs_of_one_generation_with_other_times_are_not_stale():
    spec = {"task": "ou", "task_params": {"dim": 1}, "solver": "exact", "solver_params": {},
            "seed": 0, "seed_entropy": 0, "task_version": "1", "task_code": "a",
            "solver_version": "1", "solver_code": "b", "metric_code": {"energy": "m"}}
    payloads = {
        "r1": {"spec": {**spec, "times": [0.1]}, "rows": [{"finished_at": "2026-01-01"}]},
        "r2": {"spec": {**spec, "times": [0.5], "metric_code": {"energy": "m", "symkl": "s"}},
               "rows": [{"finished_at": "2026-01-02"}]},
        "r3": {"spec": {**spec, "solver_code": "old"}, "rows": [{"finished_at": "2025-12-01"}]},
        "r4": {"spec": {**spec, "metric_code": {"energy": "old"}},
               "rows": [{"finished_at": "2025-12-02"}]},
    }
    current, stale = store.split_generations(payloads)
    assert set(current) == {"r1", "r2"} and set(stale) == {"r3", "r4"}


@pytest.mark.parametrize("old_id,new_id", [("a" * 16, "f" * 16), ("f" * 16, "a" * 16)])
def test_runs_finished_in_one_second_are_ordered_by_when_their_files_were_written(old_id,
                                                                                  new_id):
    """finished_at has whole seconds: two generations finished within one second are told
    apart by written_ns, whatever the order of their (random) run ids."""
    def payload(run_id, code, written_ns):
        spec = {"run_id": run_id, "task": "ou", "task_params": {"dim": 1}, "solver": "em",
                "solver_params": {}, "seed": 0, "seed_entropy": 1, "task_code": code,
                "solver_code": "s", "times": [0.5]}
        return {"spec": spec, "written_ns": written_ns,
                "rows": [{"run_id": run_id, "finished_at": "2026-12-05T08:00:00+00:00"}]}

    payloads = {old_id: payload(old_id, "old", 1_000), new_id: payload(new_id, "new", 2_000)}
    current, stale = store.split_generations(payloads)
    assert list(current) == [new_id] and list(stale) == [old_id]


def test_prune_with_a_profile_keeps_a_run_not_yet_rerun_at_new_code(gfbench, plugin_dir):
    """An edit without a rerun leaves results of older code whose experiment the profile still
    produces: ``prune --profile`` keeps them (they are the only numbers there are), and lists
    only the experiments the profile no longer has."""
    path, module, helper = plugin_dir
    out = path / "results"
    profile = path / "p.toml"
    profile.write_text(f'[run]\nseeds = 1\nmetrics = ["energy"]\n[tasks."{module}:Shifted"]\n'
                       f'dim = [1]\ntimes = [0.2]\n[solvers.exact]\nn_samples = [256]\n')
    _reset_hashes()
    assert gfbench("run", "--profile", profile, "--quiet", "--no-report", "--out", out)[0] == 0
    # an experiment the profile does not produce (another sample size)
    assert gfbench("run", "--task", f"{module}:Shifted", "-P", f"{module}:Shifted.dim=1",
                   "--times", "0.2", "--seeds", "1", "--solver", "exact",
                   "-P", "exact.n_samples=128", "--metrics", "energy", "--quiet", "--no-report",
                   "--out", out)[0] == 0
    (path / f"{helper}.py").write_text("SHIFT = 0.25\n")  # new run ids, nothing rerun
    _reset_hashes()
    sys.modules.pop(helper, None)
    sys.modules.pop(module, None)
    code, stdout, stderr = gfbench("prune", out, "--profile", profile, "--delete")
    assert code == 0, stderr
    assert "1 of 2 run files are stale" in stderr and stdout.count("in no grid") == 1
    frame = store.load(out)
    assert list(frame["solver.n_samples"]) == [256]
