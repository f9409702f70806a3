"""Shared fixtures: run the CLI in-process and read results back."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# run processes are forkserver children: they see the faulty_solvers plugin
# module through PYTHONPATH, like a user's own solver module would be found
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS_DIR), os.environ.get("PYTHONPATH", "")) if p)
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture
def gfbench(capsys):
    """Call ``gfbench`` in-process: ``gfbench("run", ...) -> (exit code, stdout, stderr)``."""
    from cli.main import main

    def call(*argv: str):
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


#: a tiny OU grid used by several runner tests (a few seconds)
TINY = ["--task", "ou", "-P", "ou.dim=1,2", "--times", "0.1,0.2", "--seeds", "2",
        "--solver", "em", "--solver", "exact", "-P", "em.n_particles=200",
        "-P", "exact.n_samples=512", "--metrics", "symkl,symkl_kde,energy", "--quiet",
        "--no-report"]


@pytest.fixture
def one_thread():
    """One torch thread, as the runner pins each run (used by the benchmarks)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
