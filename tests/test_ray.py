"""``--backend ray`` runs the same runs as the local backend and writes the same rows.

Skipped only where ray cannot be imported (it is in the ``test`` extra).
"""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import TINY
from execution import store

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'gfbench[ray]')")

KEYS = ["run_id", "t"]
COMPARED = ["task", "task_config", "solver", "solver_config", "seed", "status", "symkl",
            "symkl_kde", "energy"]


@pytest.mark.slow
def test_ray_backend_rows_equal_the_local_backend(gfbench, tmp_path):
    argv = [*TINY, "-P", "ou.dim=1"]  # 4 runs: exact and em, 2 seeds, OU in 1-D
    code, _, err = gfbench("run", *argv, "--out", tmp_path / "local")
    assert code == 0, err
    code, _, err = gfbench("run", *argv, "--backend", "ray", "-j", "2", "--out", tmp_path / "ray")
    assert code == 0, err
    assert not ray.is_initialized()  # the instance the run started is shut down with it
    local = store.load(tmp_path / "local").set_index(KEYS).sort_index()[COMPARED]
    remote = store.load(tmp_path / "ray").set_index(KEYS).sort_index()[COMPARED]
    assert len(local) == 8 and local.index.get_level_values("run_id").nunique() == 4
    assert list(remote.index) == list(local.index)  # the same run ids
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
