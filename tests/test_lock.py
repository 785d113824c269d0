"""The lock files (requirements/*.txt) agree with pyproject.toml: every declared dependency is locked, at
a version its specifier admits. A dependency added or narrowed without refreshing the lock fails here."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


def locked(name: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / name).read_text()
    return {canonicalize_name(m[1]): Version(m[2]) for m in PIN.finditer(text)}


@pytest.mark.parametrize(
    ("lock", "declared"),
    [
        ("runtime.txt", PROJECT["dependencies"]),
        ("test.txt", PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]),
    ],
)
def test_every_declared_dependency_is_locked_at_an_admitted_version(lock: str, declared: list[str]) -> None:
    pins = locked(lock)
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is declared in pyproject.toml but not locked in {lock}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock} locks {name}=={pins[name]}, which pyproject.toml's {line!r} refuses"
        )


def test_the_runtime_lock_has_no_test_tools() -> None:
    assert not {"pytest", "mypy", "ruff", "pubnub"} & locked("runtime.txt").keys()
