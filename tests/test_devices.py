"""Device handling: GPU-only solvers on CPU hosts, one CUDA device per worker."""
from __future__ import annotations

import pytest
import torch

from execution import store
from execution.execute import resolve_device
from execution.parallel import _assign_device
from solvers.em import EulerMaruyama
from faulty_solvers import NeedsGpu


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only host behaviour")
def test_gpu_only_solver_is_skipped_with_a_reason_on_a_cpu_host(gfbench, tmp_path):
    code, _, _ = gfbench("run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.1", "--seeds", "1",
                         "--solver", "faulty_solvers:NeedsGpu", "--solver", "exact", "--quiet",
                         "--no-report", "--out", tmp_path)
    assert code == 0  # skipped is not a failure
    frame = store.load(tmp_path).set_index("solver_path")
    assert frame.loc["faulty_solvers:NeedsGpu", "status"] == "skipped"
    assert "no CUDA" in frame.loc["faulty_solvers:NeedsGpu", "error"]
    assert frame.loc["exact", "status"] == "ok"


def test_cpu_solvers_stay_on_cpu_whatever_is_requested():
    assert resolve_device(EulerMaruyama, "cuda")[0] == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device(NeedsGpu, "cpu")[1]


def test_cuda_devices_are_assigned_round_robin_one_per_worker():
    options = {"device": "cuda", "n_gpus": 2}
    assert [_assign_device(options, i)["device"] for i in range(4)] == \
        ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert _assign_device({"device": "cpu", "n_gpus": 2}, 3)["device"] == "cpu"


def test_cuda_request_on_a_cpu_host_is_bad_input(gfbench, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    code, _, err = gfbench("run", "--task", "ou", "--solver", "em", "--device", "cuda",
                           "--out", tmp_path / "o")
    assert code == 2 and "CUDA" in err and not (tmp_path / "o").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_icnn_jko_runs_on_cuda_through_the_runner_and_agrees_with_cpu(gfbench, tmp_path):
    args = ["run", "--task", "ou", "-P", "ou.dim=2", "--times", "0.1", "--seeds", "1",
            "--solver", "icnn_jko", "-P", "icnn_jko.h=0.05", "-P", "icnn_jko.iters=100",
            "-P", "icnn_jko.pretrain_iters=200", "--metrics", "symkl,energy", "--quiet",
            "--no-report"]
    assert gfbench(*args, "--device", "cuda", "--out", tmp_path / "gpu")[0] == 0
    assert gfbench(*args, "--out", tmp_path / "cpu")[0] == 0
    gpu, cpu = store.load(tmp_path / "gpu"), store.load(tmp_path / "cpu")
    assert gpu["device"].str.startswith("cuda").all() and (cpu["device"] == "cpu").all()
    assert (gpu["status"] == "ok").all()
    # different kernels, same algorithm: both runs land near the exact marginal
    assert gpu["symkl"].iloc[0] < 0.02 and cpu["symkl"].iloc[0] < 0.02
