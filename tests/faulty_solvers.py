"""Deliberately broken solvers for the fault-tolerance tests (plugin paths
``faulty_solvers:Raises`` etc.; never registered as built-ins)."""
from __future__ import annotations

import os
import signal
import time

import numpy as np

from solvers.base import GPU_ONLY, IID_DENSITY, LOG_DENSITY, SAMPLES, Solver, SolverResult


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


class HalfSupport(_Base):
    """A mode-dropping law: the reference restricted to half its mass (x_0 above its median).

    Its density is 2·q on that half-space and 0 elsewhere, so KL(reference‖solver)
    is +∞: the verdict must say ∞, not "does not apply". (A real solver never
    uses the reference; this fixture imitates one that lost a mode.)
    """

    name = "half_support"
    capabilities = frozenset({SAMPLES, LOG_DENSITY})

    def run(self):
        return {t: self._result(self.task.reference(t)) for t in self.times}

    def _result(self, ref):
        cut = float(np.median(ref.sample(20000, self.rng)[:, 0]))

        def log_density(x):
            x = np.atleast_2d(x)
            with np.errstate(divide="ignore"):
                inside = np.log((x[:, 0] > cut).astype(float))
            return ref.log_density(x) + np.log(2.0) + inside

        def draw(n, rng):
            x = ref.sample(3 * n + 64, rng)
            x = x[x[:, 0] > cut][:n]
            return x, log_density(x)

        return SolverResult(samples=draw(512, self.rng)[0], log_density=log_density, draw=draw,
                            law=IID_DENSITY)


class ExitsZero(_Base):
    """Leaves the run process with exit code 0 and no result (``os._exit``)."""

    name = "faulty_exit0"

    def run(self):
        os._exit(0)


class SysExit(_Base):
    """Raises SystemExit(0) from run()."""

    name = "faulty_sysexit"

    def run(self):
        raise SystemExit(0)


class InitRaises(_Base):
    """A plugin whose constructor fails."""

    name = "faulty_init"

    def __init__(self, **params):
        raise RuntimeError("deliberate failure in __init__")

    def run(self):
        return {}


class BadShape(_Base):
    """Returns samples of shape (5, 7, 3) whatever the task's dimension."""

    name = "faulty_shape"

    def run(self):
        return {t: SolverResult(samples=np.zeros((5, 7, 3)), law="particles") for t in self.times}


class SpawnsChild(_Base):
    """Starts a long ``sleep`` child (tagged by ``tag``), then sleeps ``delay`` and returns."""

    name = "faulty_spawns"
    parameters = {"n": [64], "delay": [0.0], "tag": ["301.25"]}

    def run(self):
        import subprocess

        subprocess.Popen(["sleep", str(self.params["tag"])])
        time.sleep(float(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class Hog(_Base):
    """Allocates ``mb`` megabytes (touched, so resident), then returns."""

    name = "faulty_hog"
    parameters = {"n": [64], "mb": [600]}

    def run(self):
        block = np.ones(int(self.params["mb"]) * 2**20 // 8)
        time.sleep(1.0)
        x = self._samples() + block[0] - 1.0
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class Logs(_Base):
    """Appends its seed to ``$GFBENCH_TEST_LOG`` when it starts, then sleeps ``delay``."""

    name = "faulty_logs"
    parameters = {"n": [64], "delay": [1.5]}

    def run(self):
        with open(os.environ["GFBENCH_TEST_LOG"], "a") as handle:
            handle.write(f"{self.rng.integers(1 << 30)}\n")
        time.sleep(float(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class _ExactWithLogDensity(_Base):
    """The reference law itself, with a log-density a subclass distorts (``_log``)."""

    capabilities = frozenset({SAMPLES, LOG_DENSITY})

    def run(self):
        return {t: self._result(self.task.reference(t)) for t in self.times}

    def _log(self, ref, x):
        return ref.log_density(x)

    def _result(self, ref):
        def log_density(x):
            return self._log(ref, np.atleast_2d(x))

        def draw(n, rng):
            x = ref.sample(n, rng)
            return x, log_density(x)

        return SolverResult(samples=draw(512, self.rng)[0], log_density=log_density, draw=draw,
                            law=IID_DENSITY)


class Offset(_ExactWithLogDensity):
    """The exact law with log ρ + 30: a 'density' that integrates to e^30.

    Monte Carlo SymKL cannot see it (the offset cancels between the two KL
    directions): the density check must.
    """

    name = "offset_density"

    def _log(self, ref, x):
        return ref.log_density(x) + 30.0


class Huge(_ExactWithLogDensity):
    """log ρ = 1e300 everywhere: SymKL would read about −2e300 if trusted."""

    name = "huge_density"

    def _log(self, ref, x):
        return np.full(x.shape[0], 1e300)


class SpawnsDaemon(_Base):
    """Starts a ``sleep <tag>`` the way a daemon does: through an intermediate process that
    exits at once, in a new session (``start_new_session=True``), so the sleep is neither
    in the run's process group nor a child of the run process."""

    name = "faulty_daemon"
    parameters = {"n": [64], "delay": [0.0], "tag": ["304.25"]}

    def run(self):
        import subprocess
        import sys

        code = (f"import subprocess; subprocess.Popen(['sleep', '{self.params['tag']}'], "
                "start_new_session=True)")
        subprocess.run([sys.executable, "-c", code], check=True, start_new_session=True)
        time.sleep(float(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class HogChild(_Base):
    """Starts a child in a new session that holds ``mb`` megabytes (resident) for a minute,
    then sleeps ``delay`` seconds itself: the run's memory is its child's."""

    name = "faulty_hog_child"
    parameters = {"n": [64], "mb": [800], "delay": [20.0], "tag": ["305.25"]}

    def run(self):
        import subprocess
        import sys

        # the tag rides in argv so that a test can look for the child by its command line
        code = f"import time; block = bytes(1) * ({int(self.params['mb'])} << 20); time.sleep(60)"
        subprocess.Popen([sys.executable, "-c", code, str(self.params["tag"])],
                         start_new_session=True)
        time.sleep(float(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class HoldsGil(_Base):
    """Starts a ``sleep <tag>`` in a session of its own (with a tag), writes its pid to
    ``$GFBENCH_TEST_PID_FILE.<pid>``, then sleeps ``delay`` seconds inside a C call that
    keeps the GIL (libc ``sleep`` through ``ctypes.PyDLL``): no Python thread of the run
    process — its watchdog included — runs meanwhile."""

    name = "faulty_gil"
    parameters = {"n": [64], "delay": [120], "tag": [""]}

    def run(self):
        import ctypes
        import ctypes.util
        import subprocess

        if self.params["tag"]:
            subprocess.Popen(["sleep", str(self.params["tag"])], start_new_session=True)
        pid_file = os.environ.get("GFBENCH_TEST_PID_FILE")
        if pid_file:
            with open(f"{pid_file}.{os.getpid()}", "w") as handle:
                handle.write(str(os.getpid()))
        ctypes.PyDLL(ctypes.util.find_library("c")).sleep(int(self.params["delay"]))
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class DiskFull(_Base):
    """Returns a good result, but the disk is 'full' when its run process writes it: the
    run process's own ``store.atomic_write_text`` raises as on ENOSPC."""

    name = "faulty_disk_full"

    def run(self):
        from execution import store

        def full(path, text):
            raise store.StoreError(f"cannot write {path}: No space left on device")

        store.atomic_write_text = full  # this process only: the supervisor's writes work
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}


class Nameless(_Base):
    """A plugin solver that forgot its ``name``."""

    def run(self):
        x = self._samples()
        return {t: SolverResult(samples=x, law="particles") for t in self.times}
