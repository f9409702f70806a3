"""Where a result came from: versions, git state, machine."""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=4)
def provenance(device: str = "cpu") -> dict[str, object]:
    """Provenance fields stored in every row (computed once per process and device).

    Package versions come from their metadata: the main process does not
    import torch unless a GPU is asked for.
    """
    import numpy

    version = _version("gfbench")
    sha = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if sha else None
    return {
        "gfbench_version": version,
        "git_sha": sha or "unknown",
        "git_dirty": dirty,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": _version("torch"),
        "host": socket.gethostname(),
        "platform": f"{platform.system()}-{platform.machine()}",
        "cpu_count": os.cpu_count(),
        "machine_id": machine_id(device),
        "argv0": Path(sys.argv[0]).name,
    }


def machine_id(device: str = "cpu") -> str:
    """An identifier of the hardware, used to decide whether timings compare."""
    gpu = "nogpu"
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "nogpu"
    cpu = platform.processor() or platform.machine()
    return f"{socket.gethostname()}|{cpu}|{os.cpu_count()}cpu|{gpu}"
