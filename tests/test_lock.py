"""What is tested is what installs: the environment the suite runs in is requirements.lock, and the
lock holds every package that Watchkeeper (with its dev extra) needs."""

from __future__ import annotations

from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO


def locked() -> dict[str, str]:
    """Name -> version of the lock's lines that apply to this interpreter."""
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                [pin] = requirement.specifier
                assert pin.operator == "==", f"{line}: the lock pins exact versions"
                pins[canonicalize_name(requirement.name)] = pin.version
    return pins


def needed(root: str, extras: set[str]) -> set[str]:
    """Every distribution `root` with `extras` requires here, transitively."""
    found: set[str] = set()
    todo = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            applies = requirement.marker is None or any(
                requirement.marker.evaluate(default_environment() | {"extra": extra})
                for extra in wanted or {""}
            )
            key = canonicalize_name(requirement.name)
            if applies and key not in found:
                found.add(key)
                todo.append((requirement.name, set(requirement.extras)))
    return found


def test_the_environment_is_the_lock() -> None:
    pins = locked()
    installed = {name: metadata.version(name) for name in pins}
    assert installed == pins, "the environment differs from requirements.lock: run make (or make clean)"


def test_the_lock_holds_everything_watchkeeper_needs() -> None:
    missing = needed("watchkeeper", {"dev"}) - set(locked())
    assert not missing, f"not in requirements.lock: {sorted(missing)}; run make lock"
