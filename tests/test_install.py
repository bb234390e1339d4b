"""The install is reproducible: constraints.txt (the lock) pins every dependency of `.[dev]` but torch, inside the
ranges of pyproject.toml, and the Makefile installs with it. Static checks plus the installed dependency tree."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
UNLOCKED = {"torch"}  # the Makefile's TORCH_SPEC, or a GPU user's own CUDA build


def lock() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def declared() -> list[Requirement]:
    """The requirements `make` installs: the base dependencies and the dev extra."""
    project = PYPROJECT["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_declared_dependency_has_bounds_and_a_pin_inside_them():
    pins = lock()
    for req in declared():
        name = canonicalize_name(req.name)
        assert any(s.operator == "<" for s in req.specifier), f"{req} has no upper bound"
        if name in UNLOCKED:
            assert name not in pins, f"{name} must not be locked (see Makefile TORCH_SPEC)"
            continue
        assert name in pins, f"{req.name} is not in constraints.txt: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {req}: run `make lock`"


def test_the_tools_that_install_are_locked_too():
    pins = lock()
    assert "pip" in pins and "setuptools" in pins
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    for req in build:
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"the lock's build backend is outside {req}"


def test_the_makefile_installs_from_the_lock():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install -q -c \$\(LOCK\) --build-constraint \$\(LOCK\)", make)
    assert re.search(r"^LOCK := constraints\.txt$", make, re.M)
    assert re.search(r'PIP_LOCKED\) -e "\.\[dev\]"', make)
    assert re.search(r"^lock:", make, re.M)


def _installed_closure() -> set[str]:
    """Every distribution the installed sharpen[dev] needs, following the installed packages' requirements."""
    env = default_environment()
    todo, seen = [(req, frozenset()) for req in declared()], set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})):
            continue
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo.extend((Requirement(r), frozenset(req.extras)) for r in dist.requires or [])
    return {name for name, _ in seen}


def test_the_lock_covers_every_installed_dependency():
    try:
        metadata.distribution("sharpen")
    except metadata.PackageNotFoundError:
        pytest.skip("sharpen is not installed (tests run from a checkout): `make setup` installs it")
    pins = lock()
    missing = sorted(_installed_closure() - set(pins) - UNLOCKED
                     - {canonicalize_name(n) for n in _torch_requirements()})
    assert not missing, f"installed dependencies not in constraints.txt: {missing}; run `make lock`"


def _torch_requirements() -> set[str]:
    """torch's own dependencies: they come with the torch build the user installed, CPU or CUDA."""
    try:
        return {Requirement(r).name for r in metadata.distribution("torch").requires or []}
    except metadata.PackageNotFoundError:
        return set()
