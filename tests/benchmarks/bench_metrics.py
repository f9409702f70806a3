"""Speed of the KDE evaluation behind ``symkl_kde`` and the particle densities.

Run: python -m pytest tests/benchmarks/bench_metrics.py --benchmark-enable

scipy's ``gaussian_kde.logpdf`` against :func:`numerics.kde.kde_logpdf` on the
size of one SymKL-through-KDE evaluation (8192 points, 10,000 kernels), one
thread, side by side in the same run; the ratio is printed.
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import gaussian_kde

from numerics.kde import kde_logpdf

pytestmark = pytest.mark.usefixtures("one_thread")

MEANS: dict[tuple[int, str], float] = {}


def _problem(dim: int):
    rng = np.random.default_rng(0)
    kde = gaussian_kde(rng.standard_normal((dim, 10_000)))
    return kde, rng.standard_normal((8192, dim))


@pytest.mark.parametrize("dim", [1, 12])
@pytest.mark.parametrize("impl", ["scipy", "gfbench"])
def test_kde_logpdf(benchmark, dim, impl):
    kde, points = _problem(dim)
    fn = (lambda: kde.logpdf(points.T)) if impl == "scipy" else (lambda: kde_logpdf(kde, points))
    benchmark.group = f"KDE log-density, 8192 points x 10000 kernels, D={dim}"
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    MEANS[(dim, impl)] = benchmark.stats.stats.mean


@pytest.mark.parametrize("dim", [1, 12])
def test_kde_speedup(benchmark, dim):
    if (dim, "scipy") not in MEANS or (dim, "gfbench") not in MEANS:
        pytest.skip("needs --benchmark-enable and both timings above")
    ratio = MEANS[(dim, "scipy")] / MEANS[(dim, "gfbench")]
    benchmark.extra_info["speedup"] = ratio
    benchmark.pedantic(lambda: None, rounds=1)
    print(f"\nD={dim}: scipy {MEANS[(dim, 'scipy')]:.2f} s, gfbench "
          f"{MEANS[(dim, 'gfbench')]:.2f} s, ratio {ratio:.1f}x")
