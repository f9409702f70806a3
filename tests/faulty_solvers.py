"""Deliberately broken solvers for the fault-tolerance tests (plugin paths
``faulty_solvers:Raises`` etc.; never registered as built-ins)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from solvers.base import GPU_ONLY, SAMPLES, Solver, SolverResult


class _Base(Solver):
    capabilities = frozenset({SAMPLES})
    parameters = {"n": [64]}

    def setup(self, task, times, seed, context):
        self.task, self.times = task, list(times)
        self.rng = np.random.default_rng(seed)

    def _samples(self):
        return self.task.sample_initial(int(self.params["n"]), self.rng)


class Raises(_Base):
    name = "faulty_raises"

    def run(self):
        raise RuntimeError("deliberate failure inside run()")


class ReturnsNaN(_Base):
    name = "faulty_nan"

    def run(self):
        x = self._samples()
        x[0, 0] = np.nan
        return {t: SolverResult(samples=x) for t in self.times}


class Hangs(_Base):
    name = "faulty_hangs"

    def run(self):
        time.sleep(3600)


class KillsItself(_Base):
    name = "faulty_sigkill"

    def run(self):
        os.kill(os.getpid(), signal.SIGKILL)


class Slow(_Base):
    """Sleeps ``delay`` seconds, then returns initial-law samples (for kill tests)."""

    name = "faulty_slow"
    parameters = {"n": [64], "delay": [1.0]}

    def run(self):
        pid_file = os.environ.get("GFBENCH_TEST_PID_FILE")
        if pid_file:  # lets a test find this run process
            with open(pid_file, "w") as handle:
                handle.write(str(os.getpid()))
        time.sleep(float(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x) for t in self.times}


class NeedsGpu(_Base):
    """A GPU-only solver: on a CPU-only host the runner must skip it, with the reason."""

    name = "needs_gpu"
    capabilities = frozenset({SAMPLES, GPU_ONLY})

    def run(self):
        x = self._samples()
        return {t: SolverResult(samples=x) for t in self.times}
