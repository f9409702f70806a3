"""One ICNN-JKO training iteration of gfbench against the original study's code, side by side.

Run (the original repository, PetrMokrov/Large-Scale-Wasserstein-Gradient-Flows,
checked out outside this repository; its ``src`` package needs ``multipledispatch``
importable, e.g. ``pip install --target DIR multipledispatch`` and DIR on PYTHONPATH)::

    GFBENCH_ORIGINAL_ICNN=/path/to/checkout \\
        python -m pytest tests/benchmarks/bench_vs_original.py --benchmark-enable -s -p no:cacheprovider

Skipped, with the reason, unless the variable names a checkout whose ``src/icnn.py``
and ``src/diffusion.py`` import. Nothing of the original code is in this
repository: its network (``src.icnn.DenseICNN``), its gradient map (``push``:
autograd with ``create_graph``) and its entropy term
(``src.diffusion.Diffusion.negative_entropy_gain``: one autograd pass per input
dimension, then ``torch.logdet``) are imported from the checkout; the lines that
join them into one iteration follow the body of the loop of its
``train_diffusion_model`` (loss ½Σ‖∇ψ(X) − X‖²/n + h(−Σ log det ∇²ψ/n − Σ log p(∇ψ)/n),
backward, Adam with weight decay 1e-9, clamp), with the batch drawn beforehand
on both sides (its first JKO step draws a fresh ρ0 batch, which costs the same
on both sides and is not timed). Its module ``diffusion.py`` imports
``collections.Iterable``, gone since Python 3.10: the alias to
``collections.abc.Iterable`` is set before the import.

Both sides: OU task (seed 0) at dimension D, ICNN of two hidden layers of width
w, rank 5, softplus, batch 1024, float32, h = 0.05, one torch thread, the
allocator settings of a gfbench run process (``tune_allocator``) for both. The
target of the original is the OU stationary law as a torch
``MultivariateNormal`` (its OU experiment's form); ours is the task's quadratic
potential. Our side takes the solver's own optimiser (``jko_optimizer``: Adam with
``fused=True``) and, for D <= 16, the fused ∇ψ/log det Function of numerics/icnn.py.
The two sides are timed call by call in turn (A, B, A, B, ...), so
that the load of a shared machine falls on both alike; the ratio of the
medians goes to ``extra_info`` and is printed.
"""
from __future__ import annotations

import collections
import collections.abc
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from execution.resources import reset_allocator, tune_allocator
from solvers import icnn_jko as ij
from tasks.ou import OrnsteinUhlenbeck

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = "GFBENCH_ORIGINAL_ICNN"
BATCH, RANK, H, LR = 1024, 5, 0.05, 5e-3
#: (D, width): the study's OU width, and the stationary-mixture width at low and high D
CASES = [(12, 64), (2, 256), (32, 256)]


def _original_modules():
    """``(src.icnn, src.diffusion)`` of the checkout named by $GFBENCH_ORIGINAL_ICNN, or skip."""
    root = os.environ.get(ENV)
    if not root:
        pytest.skip(f"set {ENV} to a checkout of PetrMokrov/Large-Scale-Wasserstein-Gradient-"
                    "Flows to time the original code")
    if not (Path(root) / "src" / "icnn.py").is_file():
        pytest.skip(f"{ENV}={root} has no src/icnn.py")
    if not hasattr(collections, "Iterable"):
        collections.Iterable = collections.abc.Iterable  # its diffusion.py predates 3.10
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        return importlib.import_module("src.icnn"), importlib.import_module("src.diffusion")
    except ImportError as err:
        pytest.skip(f"the original's modules do not import ({err}); it needs multipledispatch")


def _batch(task: OrnsteinUhlenbeck) -> torch.Tensor:
    """One ρ0 batch ``(BATCH, D)`` float32, the same for both sides."""
    return torch.as_tensor(task.sample_initial(BATCH, np.random.default_rng(0)),
                           dtype=torch.float32)


def original_step(icnn, diffusion, task: OrnsteinUhlenbeck, width: int):
    """One iteration of the original's JKO training loop, as a closure over its state."""
    dim = task.dim
    torch.manual_seed(0)
    model = icnn.DenseICNN(dim, [width, width], rank=RANK, activation="softplus",
                           batch_size=BATCH)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) / np.sqrt(float(width)))
    target = torch.distributions.MultivariateNormal(
        torch.as_tensor(task.b, dtype=torch.float32),
        torch.as_tensor(np.linalg.inv(task.A) / task.beta, dtype=torch.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=1e-9)
    x0 = _batch(task)
    factor = 1.0 / BATCH

    def step() -> float:
        optimizer.zero_grad()
        x = x0.clone().requires_grad_(True)
        push_x = model.push(x)
        entropy = factor * diffusion.Diffusion.negative_entropy_gain(push_x, x).sum()
        transport = factor * 0.5 * ((push_x - x) ** 2).sum(dim=1).sum()
        potential = factor * target.log_prob(push_x).sum()
        loss = transport + H * (entropy - potential)
        loss.backward()
        value = loss.item()
        optimizer.step()
        model.convexify()
        optimizer.zero_grad()
        return value

    return step


def gfbench_step(task: OrnsteinUhlenbeck, width: int):
    """One iteration of gfbench's ICNN-JKO training (:func:`solvers.icnn_jko.train_iteration`)."""
    params = ij.init_icnn(task.dim, width, RANK, torch.Generator().manual_seed(0))
    optimizer = ij.jko_optimizer(params, LR)
    x = _batch(task)
    return lambda: ij.train_iteration(params, optimizer, x, H, task.beta, 1e-6,
                                      task.potential_torch)[0]


def interleaved_medians(first, second, repeats: int, warmup: int = 3) -> tuple[float, float]:
    """Median seconds of ``first()`` and ``second()``, called in turn ``repeats`` times each."""
    for _ in range(warmup):
        first()
        second()
    times = np.empty((repeats, 2))
    for i in range(repeats):
        for k, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            times[i, k] = time.perf_counter() - start
    return float(np.median(times[:, 0])), float(np.median(times[:, 1]))


@pytest.mark.parametrize("dim,width", CASES, ids=[f"D{d}-w{w}" for d, w in CASES])
def test_training_iteration_against_the_original(benchmark, dim, width):
    icnn, diffusion = _original_modules()
    task = OrnsteinUhlenbeck(np.random.SeedSequence(0), dim=dim)
    tune_allocator()
    try:
        theirs, ours = original_step(icnn, diffusion, task, width), gfbench_step(task, width)
        repeats = 20 if dim < 32 else 8
        t_theirs, t_ours = benchmark.pedantic(
            lambda: interleaved_medians(theirs, ours, repeats), rounds=1)
    finally:
        reset_allocator()
    ratio = t_theirs / t_ours
    benchmark.group = "ICNN-JKO training iteration vs the original (batch 1024, one thread)"
    benchmark.extra_info.update(dim=dim, width=width, original_ms=1e3 * t_theirs,
                                gfbench_ms=1e3 * t_ours, ratio=ratio,
                                load=os.getloadavg()[0])
    print(f"\nD={dim} w={width}: original {1e3 * t_theirs:.1f} ms, gfbench "
          f"{1e3 * t_ours:.2f} ms, {ratio:.1f}x (load {os.getloadavg()[0]:.2f})")
    assert ratio > 1.0
