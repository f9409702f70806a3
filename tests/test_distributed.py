"""The runner on a dask.distributed cluster writes the same rows as loky."""
from __future__ import annotations

import pandas as pd
import pytest

from conftest import TINY
from execution import store

distributed = pytest.importorskip("dask.distributed", reason="dask extra not installed")

KEYS = ["run_id", "t"]
COMPARED = ["task", "task_config", "solver", "solver_config", "seed", "status", "symkl",
            "symkl_kde", "energy"]


@pytest.mark.slow
def test_dask_local_cluster_rows_equal_default_backend(gfbench, tmp_path):
    assert gfbench("run", *TINY, "-j", "2", "--out", tmp_path / "loky")[0] == 0
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        code, _, err = gfbench("run", *TINY, "--backend", "dask", "--scheduler",
                               cluster.scheduler_address, "--out", tmp_path / "dask")
    assert code == 0, err
    loky = store.load(tmp_path / "loky").set_index(KEYS).sort_index()[COMPARED]
    dask = store.load(tmp_path / "dask").set_index(KEYS).sort_index()[loky.columns]
    assert len(dask) == 16
    pd.testing.assert_frame_equal(loky, dask, check_exact=True)
