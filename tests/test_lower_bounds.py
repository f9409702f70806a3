"""``.ci/lower-bounds.txt`` pins exactly the lower bounds pyproject.toml states.

CI's second stage installs gfbench with that file as constraints and runs the
tests there, so a bound raised or lowered in one file and not the other would
be a bound no longer tested.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, Version]:
    """Package -> lower bound, over the dependencies and every extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    bounds: dict[str, Version] = {}
    for text in texts:
        req = Requirement(text)
        for spec in req.specifier:
            if spec.operator == ">=":
                name = req.name.lower()
                bounds[name] = max(bounds.get(name, Version(spec.version)), Version(spec.version))
    return bounds


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / ".ci" / "lower-bounds.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line).groups()
            pins[name.lower()] = Version(version)
    return pins


def test_every_lower_bound_is_pinned_in_the_ci_constraints():
    bounds, pins = _lower_bounds(), _pins()
    assert bounds, "pyproject.toml states no lower bounds"
    assert {name: pins.get(name) for name in bounds} == bounds


def test_the_constraints_pin_nothing_pyproject_does_not_bound():
    # distributed comes with dask[distributed], which needs the same version
    extra = set(_pins()) - set(_lower_bounds())
    assert extra <= {"distributed"}
    assert _pins().get("distributed", _pins()["dask"]) == _pins()["dask"]
