"""Threads per run: why the default is 1.

Run: python -m pytest tests/benchmarks/bench_threads.py --benchmark-enable -s

One ICNN-JKO training iteration (D=12, w=64, batch 1024) and one energy-distance
evaluation (4096 points, D=12), each at 1 and 2 torch/BLAS threads, side by side. On
an idle 2-core machine a second thread helps little (small kernels); on a busy one
(another run on the other core, which is what -j 2 means) the two threads contend
for one core and spin. The README states the ratios measured both ways.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from metrics.base import ReferenceDraws
from metrics.sample_distances import ENERGY
from execution.resources import tune_allocator
from solvers.base import SolverResult
from solvers.icnn_jko import init_icnn, jko_loss
from tasks.ou import OrnsteinUhlenbeck

MEANS: dict[tuple[str, int], float] = {}


def _icnn_step():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=12)
    params = init_icnn(12, 64, 5, torch.Generator().manual_seed(0))
    x = torch.as_tensor(task.sample_initial(1024, np.random.default_rng(0)), dtype=torch.float32)
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = jko_loss(params, x, 0.05, 1.0, 1e-6, task.potential_torch)
        loss.backward()
        optimizer.step()

    return step


def _energy():
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=12)
    ref = task.reference(0.9)
    result = SolverResult(samples=ref.sample(4096, np.random.default_rng(1)), law="particles")

    def evaluate():
        ENERGY(result, ref, rng=np.random.default_rng(0),
               draws=ReferenceDraws(ref, np.random.SeedSequence(0)))

    return evaluate


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("work", ["icnn_iteration", "energy_metric"])
def test_threads(benchmark, work, threads):
    tune_allocator()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            fn = _icnn_step() if work == "icnn_iteration" else _energy()
            benchmark.group = f"{work} at 1 and 2 threads"
            benchmark.pedantic(fn, rounds=20 if work == "icnn_iteration" else 8,
                               warmup_rounds=2)
    finally:
        torch.set_num_threads(before)
    MEANS[(work, threads)] = benchmark.stats.stats.mean


def test_thread_ratios(benchmark):
    if len(MEANS) < 4:
        pytest.skip("needs --benchmark-enable and the timings above")
    benchmark.pedantic(lambda: None, rounds=1)
    for work in ("icnn_iteration", "energy_metric"):
        ratio = MEANS[(work, 1)] / MEANS[(work, 2)]
        benchmark.extra_info[work] = ratio
        print(f"\n{work}: 1 thread {MEANS[(work, 1)] * 1e3:.1f} ms, 2 threads "
              f"{MEANS[(work, 2)] * 1e3:.1f} ms: 2 threads are {ratio:.2f}x as fast")
