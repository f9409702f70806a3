"""Speed claims of icnn_jko.

Run: python -m pytest tests/benchmarks/bench_icnn_jko.py --benchmark-enable -s

1. One training iteration at D=12, w=64, batch 1024, float32, 1 CPU thread: closed-form
   gradient/Hessian + Cholesky log-det vs the straightforward way (one autograd pass per
   input dimension, then torch.logdet). Target: >= 4x.
2. Cost per JKO step independent of k with the sample pool: time of step 20 <= 1.5x step 2
   (the fresh-sample mode, pushing every batch through all earlier maps, grows with k).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from solvers.base import RunContext
from solvers.icnn_jko import IcnnJko, init_icnn, train_iteration
from tasks.ou import OrnsteinUhlenbeck

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, WIDTH, BATCH = 12, 64, 1024
MEANS: dict[str, float] = {}


def _iteration(naive: bool):
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    params = init_icnn(DIM, WIDTH, 5, torch.Generator().manual_seed(0))
    x = torch.as_tensor(task.sample_initial(BATCH, np.random.default_rng(0)), dtype=torch.float32)
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4)
    return lambda: train_iteration(params, optimizer, x, 0.05, 1.0, 1e-6, task.potential_torch,
                                   naive=naive)


@pytest.mark.parametrize("mode", ["closed_form", "naive"])
def test_training_iteration(benchmark, mode):
    step = _iteration(mode == "naive")
    benchmark.group = "icnn_jko training iteration D=12 w=64 batch=1024"
    benchmark.pedantic(step, rounds=30, warmup_rounds=3)
    MEANS[mode] = benchmark.stats.stats.mean


def test_training_iteration_speedup(benchmark):
    if len(MEANS) < 2 or any(v is None for v in MEANS.values()):
        pytest.skip("needs --benchmark-enable and both timings above")
    ratio = MEANS["naive"] / MEANS["closed_form"]
    benchmark.extra_info["speedup"] = ratio
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\nclosed form {MEANS['closed_form'] * 1e3:.1f} ms, "
          f"naive {MEANS['naive'] * 1e3:.1f} ms, speed-up {ratio:.1f}x")
    assert ratio >= 4.0


def _step_times(fresh: bool) -> list[float]:
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    solver = IcnnJko(iters=40, pretrain_iters=50, fresh_samples=fresh, n_samples=256)
    solver.setup(task, [1.0], np.random.SeedSequence(1), RunContext())
    start = time.perf_counter()
    result = solver.run()[1.0]
    assert time.perf_counter() - start > 0
    return result.info["step_times"]


@pytest.mark.parametrize("mode", ["pool", "fresh"])
def test_step_time_does_not_grow_with_k(benchmark, mode):
    times = benchmark.pedantic(lambda: _step_times(mode == "fresh"), rounds=1)
    ratio = times[19] / times[1]
    benchmark.extra_info.update({"step2_s": times[1], "step20_s": times[19], "ratio": ratio})
    print(f"\n{mode}: step 2 {times[1]:.2f} s, step 20 {times[19]:.2f} s, ratio {ratio:.2f}")
    if mode == "pool":
        assert ratio <= 1.5
