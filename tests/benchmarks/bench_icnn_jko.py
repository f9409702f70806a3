"""Speed claims of icnn_jko, each measured side by side with its previous code path.

Run: python -m pytest tests/benchmarks/bench_icnn_jko.py --benchmark-enable -s

1. One training iteration at D=12, w=64, batch 1024, float32, 1 CPU thread: the current
   closed form (one GEMM per pre-activation set, ∇ψ from Σ v_j K_j, weighted Gram with a
   one-product backward) in a run process's allocator settings, against the previous code
   path (icnn_baseline.py) in glibc's default ones; the two effects are also timed apart.
   Gradients equal to 1e-6 relative in float64. And against the straightforward way (one
   autograd pass per input dimension, then torch.logdet).
2. log_density at D=12 after 18 trained maps (8192 points): float32 Newton phase, warm
   start, residual-decrease steps on unconverged rows only, 1024-row chunks, against the
   previous Newton (Armijo on ψ, float64, every row); same values to 1e-6 relative.
3. Cost per JKO step independent of k with the sample pool: step 20 <= 1.5x step 2.
4. Peak memory of pushing a 1,024,000-row pool through one map (subprocesses).
5. One training iteration against round 3 (icnn_baseline.round3_*: packed curvature
   with index gathers, autograd through the Gram Function and log det, default Adam) at
   (D, w) = (12, 64), (2, 256), (16, 256), (32, 256), called in turn; ratios and the
   load in extra_info.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import icnn_baseline as old
from execution.resources import reset_allocator, tune_allocator
from numerics import icnn as ij
from numerics import icnn_maps as im
from numerics.icnn import init_icnn
from solvers.base import RunContext
from solvers.icnn_jko import IcnnJko, jko_loss
from tasks.ou import OrnsteinUhlenbeck

pytestmark = pytest.mark.usefixtures("one_thread")

DIM, WIDTH, BATCH = 12, 64, 1024
MEANS: dict[str, float] = {}


def _setup(dtype=torch.float32):
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    params = init_icnn(DIM, WIDTH, 5, torch.Generator().manual_seed(0), dtype)
    x = torch.as_tensor(task.sample_initial(BATCH, np.random.default_rng(0)), dtype=dtype)
    return task, params, x


def _baseline_loss(params, x, task):
    grad, hess = old.icnn_grad_hess(params, x, 1e-6)
    logdet, _ = ij.logdet_pd(hess)
    return 0.5 * ((grad - x) ** 2).sum(1).mean() + 0.05 * (
        task.potential_torch(grad).mean() - logdet.mean())


def _iteration(path: str):
    task, params, x = _setup()
    optimizer = torch.optim.Adam(list(params.values()), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        if path == "previous":
            loss = _baseline_loss(params, x, task)
        else:
            loss, _ = jko_loss(params, x, 0.05, 1.0, 1e-6, task.potential_torch,
                               naive=path == "naive")
        loss.backward()
        optimizer.step()
        ij.clamp_nonnegative_(params)

    return step


def test_gradients_of_both_code_paths_agree_in_float64():
    task, params, x = _setup(torch.float64)
    grads = []
    for loss in (lambda: _baseline_loss(params, x, task),
                 lambda: jko_loss(params, x, 0.05, 1.0, 1e-6, task.potential_torch)[0]):
        grads.append(torch.autograd.grad(loss(), list(params.values())))
    for key, a, b in zip(params, *grads):
        assert float((a - b).norm() / b.norm()) < 1e-6, key


@pytest.mark.parametrize("case", ["previous, default allocator", "previous, run allocator",
                                  "current, default allocator", "current, run allocator",
                                  "naive, run allocator"])
def test_training_iteration(benchmark, case):
    path, allocator = case.split(", ")
    (tune_allocator if allocator == "run allocator" else reset_allocator)()
    try:
        step = _iteration(path)
        benchmark.group = "icnn_jko training iteration D=12 w=64 batch=1024"
        benchmark.pedantic(step, rounds=30 if path != "naive" else 10, warmup_rounds=3)
    finally:
        reset_allocator()
    MEANS[case] = benchmark.stats.stats.mean


def test_training_iteration_speedup(benchmark):
    if len(MEANS) < 5 or any(v is None for v in MEANS.values()):
        pytest.skip("needs --benchmark-enable and the timings above")
    base = MEANS["previous, default allocator"]
    total = base / MEANS["current, run allocator"]
    naive = MEANS["naive, run allocator"] / MEANS["current, run allocator"]
    benchmark.extra_info.update(total=total, naive=naive)
    benchmark.pedantic(lambda: None, rounds=1)
    print("\n" + "\n".join(f"{k}: {v * 1e3:.1f} ms" for k, v in MEANS.items()))
    print(f"code path alone: {base / MEANS['current, default allocator']:.2f}x, allocator "
          f"alone: {base / MEANS['previous, run allocator']:.2f}x, together {total:.2f}x; "
          f"against per-dimension autograd {naive:.1f}x")
    assert total >= 1.6 and naive >= 12.0


# --- round 4 against round 3 ------------------------------------------------------------------
ROUND3_CASES = [(12, 64), (2, 256), (16, 256), (32, 256)]


@pytest.mark.parametrize("dim,width", ROUND3_CASES, ids=[f"D{d}-w{w}" for d, w in ROUND3_CASES])
def test_training_iteration_against_round3(benchmark, dim, width):
    """solvers.icnn_jko.train_iteration against the round-3 path, called in turn (A, B, A, ...)."""
    from solvers import icnn_jko
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=dim)
    x = torch.as_tensor(task.sample_initial(BATCH, np.random.default_rng(0)),
                        dtype=torch.float32)
    old_params = init_icnn(dim, width, 5, torch.Generator().manual_seed(0))
    old_opt = torch.optim.Adam(list(old_params.values()), lr=5e-3)
    new_params = init_icnn(dim, width, 5, torch.Generator().manual_seed(0))
    new_opt = icnn_jko.jko_optimizer(new_params, 5e-3)
    steps = (lambda: old.round3_train_iteration(old_params, old_opt, x, 0.05, task.beta, 1e-6,
                                                task.potential_torch),
             lambda: icnn_jko.train_iteration(new_params, new_opt, x, 0.05, task.beta, 1e-6,
                                              task.potential_torch))
    repeats = 30 if dim < 32 else 10
    tune_allocator()
    try:
        def interleaved():
            times = np.empty((repeats + 3, 2))
            for i in range(repeats + 3):
                for k, step in enumerate(steps):
                    start = time.perf_counter()
                    step()
                    times[i, k] = time.perf_counter() - start
            return np.median(times[3:], axis=0)
        t_old, t_new = benchmark.pedantic(interleaved, rounds=1)
    finally:
        reset_allocator()
    ratio = t_old / t_new
    benchmark.group = "icnn_jko training iteration: round 4 against round 3 (batch 1024)"
    benchmark.extra_info.update(dim=dim, width=width, round3_ms=1e3 * t_old,
                                current_ms=1e3 * t_new, ratio=ratio, load=os.getloadavg()[0])
    print(f"\nD={dim} w={width}: round 3 {1e3 * t_old:.2f} ms, current {1e3 * t_new:.2f} ms, "
          f"{ratio:.2f}x (load {os.getloadavg()[0]:.2f})")
    assert ratio > 1.0


# --- log_density --------------------------------------------------------------------------
MAPS = Path(__file__).with_name(".icnn_maps_d12.pt")


def _trained_maps() -> list[dict]:
    """18 ICNN-JKO maps on OU D=12 (h=0.05, 500 it/step), trained once and cached."""
    if MAPS.is_file():
        return torch.load(MAPS)
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    solver = IcnnJko(iters=500, pretrain_iters=500, n_samples=256)
    solver.setup(task, [0.9], np.random.SeedSequence(1), RunContext())
    solver.run()
    maps = [im.detached(m, torch.float64) for m in solver.maps]
    torch.save(maps, MAPS)
    return maps


def test_log_density_after_18_maps(benchmark):
    maps = _trained_maps()
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    y = torch.as_tensor(task.reference(0.9).sample(8192, np.random.default_rng(0)))

    def previous():
        return torch.cat([old.pull_back(maps, y[i:i + 4096], 1e-6)[1]
                          for i in range(0, 8192, 4096)])

    def current():
        return torch.cat([im.pull_back(maps, y[i:i + im.CHUNK], 1e-6)[1]
                          for i in range(0, 8192, im.CHUNK)])

    reset_allocator()
    start = time.perf_counter()
    expected = previous()
    before = time.perf_counter() - start
    tune_allocator()
    try:
        got = benchmark.pedantic(current, rounds=2)
    finally:
        reset_allocator()
    after = benchmark.stats.stats.mean
    log_p0 = torch.as_tensor(task.log_density_initial(
        im.pull_back(maps, y[:64], 1e-6)[0].numpy()))
    relative = float(((got - expected).abs()[:64] / (log_p0 - expected[:64]).abs()).max())
    benchmark.extra_info.update(previous_s=before, current_s=after, ratio=before / after,
                                relative=relative)
    print(f"\nlog_density 8192 points, 18 maps: previous {before:.2f} s, current {after:.2f} s,"
          f" {before / after:.2f}x; largest relative difference of log p {relative:.1e}")
    assert relative < 1e-6


# --- step cost and memory -------------------------------------------------------------------
def _step_times(fresh: bool) -> list[float]:
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=DIM)
    solver = IcnnJko(iters=40, pretrain_iters=50, fresh_samples=fresh, n_samples=256)
    solver.setup(task, [1.0], np.random.SeedSequence(1), RunContext())
    return solver.run()[1.0].info["step_times"]


@pytest.mark.parametrize("mode", ["pool", "fresh"])
def test_step_time_does_not_grow_with_k(benchmark, mode):
    times = benchmark.pedantic(lambda: _step_times(mode == "fresh"), rounds=1)
    ratio = times[19] / times[1]
    benchmark.extra_info.update({"step2_s": times[1], "step20_s": times[19], "ratio": ratio})
    print(f"\n{mode}: step 2 {times[1]:.2f} s, step 20 {times[19]:.2f} s, ratio {ratio:.2f}")
    if mode == "pool":
        assert ratio <= 1.5


PUSH = """
import json, resource, sys, numpy as np, torch
sys.path.insert(0, {bench!r})
torch.set_num_threads(1)
from execution.resources import tune_allocator
import icnn_baseline as old
from numerics import icnn as ij
from numerics import icnn_maps as im
if {tuned}:
    tune_allocator()
params = im.detached(ij.init_icnn(12, 64, 5, torch.Generator().manual_seed(0)))
pool = torch.randn(1_024_000, 12)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
push = old.push_trajectory if {previous} else im.push_trajectory
for _ in range(3):
    pool = push([params], pool, 1e-6)[0]
print(json.dumps([before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]))
"""


def test_peak_memory_of_pushing_the_pool(benchmark):
    def peak(previous: bool, tuned: bool) -> list[float]:
        code = PUSH.format(bench=str(Path(__file__).parent), tuned=tuned, previous=previous)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)

    rows = benchmark.pedantic(lambda: {f"previous={p}, tuned={t}": peak(p, t)
                                       for p in (True, False) for t in (False, True)}, rounds=1)
    benchmark.extra_info.update(rows)
    print("\npeak RSS (MB) before / after pushing a 1,024,000-row pool 3 times: "
          + "; ".join(f"{k}: {v[0]:.0f} -> {v[1]:.0f}" for k, v in rows.items()))
    assert rows["previous=False, tuned=True"][1] < rows["previous=True, tuned=False"][1]
