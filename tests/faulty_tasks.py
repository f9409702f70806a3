"""Deliberately broken plugin tasks for the reliability tests (plugin paths
``faulty_tasks:BadShapeReference`` etc.; never registered as built-ins).

Each is the standard Gaussian N(0, I) at rest under Φ(x) = |x|²/2 (β = 1), so
the law stays N(0, I) at every time and ``exact``-like solvers have a right
answer; what breaks is the task's own reference.
"""
from __future__ import annotations

import numpy as np

from tasks.base import Reference, Task, gaussian_log_density, gaussian_sampler


class _StandardGaussian(Task):
    """N(0, I) at rest; no ``name`` here (see :class:`Nameless`)."""

    version = "1"
    parameters = {"dim": [1]}
    default_times = (0.1,)
    bounds = {"dim": (1, 8)}

    def __init__(self, seed, dim=1):
        super().__init__(seed, dim=dim)
        self.dim = int(dim)

    def potential_torch(self, x, batch=None):
        return 0.5 * (x * x).sum(dim=1)

    def sample_initial(self, n, rng):
        return rng.standard_normal((n, self.dim))

    def log_density_initial(self, x):
        return gaussian_log_density(x, np.zeros(self.dim), np.eye(self.dim))

    def reference(self, t):
        mean, cov = np.zeros(self.dim), np.eye(self.dim)
        return Reference(t=float(t), sample=self._sampler(gaussian_sampler(mean, cov)),
                         log_density=self._log_density(
                             lambda x: gaussian_log_density(x, mean, cov)),
                         provenance="closed form: N(0, I) at rest")

    def _sampler(self, sample):
        return sample

    def _log_density(self, log_density):
        return log_density


class Nameless(_StandardGaussian):
    """A plugin task that forgot its ``name``."""


class GoodTask(_StandardGaussian):
    """The control: nothing broken."""

    name = "good_gaussian"


class BadShapeReference(_StandardGaussian):
    """Its reference sampler returns (n, dim + 1) samples."""

    name = "bad_shape_reference"

    def _sampler(self, sample):
        return lambda n, rng: np.hstack([sample(n, rng), np.zeros((n, 1))])


class NaNReference(_StandardGaussian):
    """Its reference sampler returns a NaN among its samples."""

    name = "nan_reference"

    def _sampler(self, sample):
        def broken(n, rng):
            x = sample(n, rng)
            x[0, 0] = np.nan
            return x

        return broken


class NaNLogDensity(_StandardGaussian):
    """Its reference log-density is NaN everywhere."""

    name = "nan_log_density"

    def _log_density(self, log_density):
        return lambda x: np.full(np.shape(x)[0], np.nan)
