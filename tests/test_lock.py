"""requirements.lock (the Docker image's pinned dependencies) still satisfies pyproject.toml.

Adding or tightening a dependency without refreshing the lock would build an image that lacks it or pins a version
the package refuses; this catches it without a network (docs/docker.md has the refresh command).
"""

from __future__ import annotations

import re

import tomllib
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;#]+)", line.strip()):
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def test_lock_pins_every_dependency_at_an_accepted_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = pinned()
    needed = [Requirement(r) for r in project["project"]["dependencies"] + project["build-system"]["requires"]]
    for req in needed:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: refresh it (docs/docker.md)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} does not satisfy {req}"
    # Every line is an exact pin: the image installs exactly these versions.
    assert all(v and "*" not in v for v in pins.values())
    assert "torch" not in pins  # the service never needs torch
