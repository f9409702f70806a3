"""Plugins: a module in the current directory works as ``--task module:Class``, in the
main process and in the run processes, and rows and labels show the plugin's name."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from execution import store

PLUGIN = '''
"""OU started from N(1, I) instead of N(0, I): a plugin task for the tests."""
import numpy as np

from tasks.ou import OrnsteinUhlenbeck


class ShiftedOU(OrnsteinUhlenbeck):
    name = "shifted_ou"
    version = "1"

    def __init__(self, seed, dim=2):
        super().__init__(seed, dim=dim)
        self.m0 = np.ones(self.dim)  # the marginals (reference, exact solver) follow m0
'''


@pytest.fixture
def cwd_plugin(tmp_path, monkeypatch):
    """A plugin task module in a directory that is on no import path (not yet the cwd)."""
    module = f"cwd_plugin_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.setattr(sys, "path", list(sys.path))  # what the runner appends is undone
    yield f"{module}:ShiftedOU"
    sys.modules.pop(module, None)


def test_a_plugin_in_the_current_directory_runs_under_its_name(gfbench, cwd_plugin, tmp_path,
                                                                monkeypatch):
    path = cwd_plugin
    # pool workers started elsewhere (here: in another directory, by an earlier grid) start
    # the run processes, which inherit the worker's import path and directory, not ours
    assert gfbench("run", "--task", "ou", "-P", "ou.dim=1", "--solver", "exact", "--times",
                   "0.1", "--metrics", "energy", "-j", "2", "--seeds", "2", "--quiet",
                   "--no-report", "--out", tmp_path / "warm")[0] == 0
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--task", path, "-P", f"{path}.dim=1", "--times", "0.2", "--seeds", "1",
            "--solver", "exact", "--solver", "em", "-P", "em.n_particles=200",
            "-P", "exact.n_samples=512", "--metrics", "energy", "--no-report"]
    for jobs in ("1", "2"):  # runs started by this process, then by the loky workers
        code, _, err = gfbench(*argv, "-j", jobs, "--out", f"results-{jobs}")
        assert code == 0, err
        frame = store.load(f"results-{jobs}")
        assert len(frame) == 2 and set(frame["status"]) == {"ok"}, frame["error"].tolist()
        assert set(frame["task"]) == {"shifted_ou"} and set(frame["task_path"]) == {path}
    code, _, err = gfbench("leaderboard", "results-2")
    board = open("results-2/leaderboard.md").read()
    assert code == 0 and "shifted_ou" in board and path not in board


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
#: what the guide's grids are cut to here: one seed, one temperature, no report
TINY_GUIDE = ["--quiet", "--no-report", "--seeds", "1", "-P", "tilted_well:TiltedWell.beta=1"]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture
def guide_dir(tmp_path, monkeypatch):
    """An empty current directory; the guide's modules are forgotten afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield tmp_path
    for name in ("tilted_well", "plain_em"):
        sys.modules.pop(name, None)


def test_the_plugin_guide_runs_as_written(gfbench, guide_dir):
    """Each python block is the file its first line names; the scripts and every gfbench
    command of the guide run in that directory (the grids cut to one seed and β)."""
    text = GUIDE.read_text()
    names = []
    for block in _blocks(text, "python"):
        first = block.splitlines()[0]
        assert re.fullmatch(r"# \w+\.py", first), f"a python block must start '# file.py': {first}"
        names.append(first[2:])
        (guide_dir / names[-1]).write_text(block)
    assert {"tilted_well.py", "plain_em.py", "check.py"} <= set(names)
    for name in names:  # as a user would: python check.py
        done = subprocess.run([sys.executable, name], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    commands = [shlex.split(line) for block in _blocks(text, "bash")
                for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    assert commands and all(argv[0] == "gfbench" for argv in commands)
    for argv in commands:
        code, _, err = gfbench(*argv[1:], *(TINY_GUIDE if argv[1] == "run" else []))
        assert code == 0, (argv, err)
    frame = store.load(guide_dir / "tilted-results")
    assert set(frame["status"]) == {"ok"}, frame["error"].tolist()
    assert set(frame["solver"]) == {"plain_em", "em", "exact"}
    assert set(frame["task"]) == {"tilted_well"}
    assert "plain_em" in (guide_dir / "tilted-results" / "leaderboard.md").read_text()
