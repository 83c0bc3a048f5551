"""Every change Standing makes to faust-streaming and aiokafka: one list, checked before anything is changed.

Standing runs on exact versions of both, and of mode-streaming (Faust's service
framework), which pyproject.toml pins. Where
their behaviour had to change, the function is replaced or wrapped, never
edited in place, and each change is a ``Patch`` here: what it replaces, why,
the test that shows the upstream behaviour it corrects, and the sha256 of the
upstream function's source at the pinned version. ``check`` refuses a
dependency whose version or patched source differs, naming the function and
what to do: an upgrade must be looked at patch by patch, not discovered in
production.

The patches themselves live beside the code they serve (``dispatch``,
``commits``, ``store``, ``recovery``, ``group_join``, ``embedded_broker``);
``streams.runtime.install`` applies them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

#: The versions every patch was written and checked against.
PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}


class IncompatibleDependency(RuntimeError):
    """An installed faust-streaming or aiokafka that Standing's patches were not written for."""


@dataclass
class Patch:
    """One function of a dependency that Standing replaces, wraps or copies."""

    #: ``module:Class.attribute`` of the upstream function
    target: str
    #: sha256 of the upstream function's source (``inspect.getsource``) at the pinned version
    sha256: str
    #: why it is changed, in one sentence
    why: str
    #: the test that shows the upstream behaviour this corrects
    shown_by: str
    #: the function put in its place; None when the module named in ``where``
    #: wraps it per instance (a Faust app's conductor or recovery) or copies it
    replacement: Callable | None = None
    #: where the change is made
    where: str = ""
    #: only while the embedded broker's workarounds are on (``streams.runtime.embedded_broker``)
    embedded_broker_only: bool = False
    _original: Any = field(default=None, init=False, repr=False)

    def _owner_and_name(self) -> tuple[Any, str]:
        module, _, path = self.target.partition(":")
        owner: Any = importlib.import_module(module)
        *parents, name = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        return owner, name

    @property
    def original(self) -> Callable:
        """The upstream function, as it was before any patch of this process."""
        if self._original is None:
            owner, name = self._owner_and_name()
            current = owner.__dict__[name]
            self._original = getattr(current, "__standing_replaces__", current)
        return self._original

    def check(self) -> str | None:
        """None if the upstream source is the one this patch was written for; else what is wrong and what to do."""
        try:
            source = inspect.getsource(self.original)
        except (AttributeError, KeyError, ImportError, OSError, TypeError) as error:
            return f"{self.target} is gone ({error!r}); Standing changes it ({self.where}): {self.why}"
        found = hashlib.sha256(source.encode()).hexdigest()
        if found != self.sha256:
            return (
                f"{self.target} is not the function Standing's patch was written for (source sha256 {found[:12]}, "
                f"expected {self.sha256[:12]}); Standing changes it ({self.where}) because {self.why}. "
                f"Install the pinned version, or review the patch against the new source, run {self.shown_by}, "
                f"and update its hash"
            )
        return None

    @property
    def applied(self) -> bool:
        owner, name = self._owner_and_name()
        return self.replacement is not None and owner.__dict__.get(name) is self.replacement

    def apply(self) -> None:
        if self.replacement is None or self.applied:
            return
        original = self.original
        self.replacement.__standing_replaces__ = original  # type: ignore[attr-defined]
        owner, name = self._owner_and_name()
        setattr(owner, name, self.replacement)

    def remove(self) -> None:
        """Put the upstream function back (tests that show the upstream behaviour)."""
        if self.replacement is None:
            return
        owner, name = self._owner_and_name()
        if owner.__dict__.get(name) is self.replacement:
            setattr(owner, name, self.original)


def all_patches() -> list[Patch]:
    """Every patch, in the order they are applied."""
    from streams.runtime import commits, dispatch, embedded_broker, group_join, recovery, store, worker

    return [
        *dispatch.PATCHES,
        *commits.PATCHES,
        *recovery.PATCHES,
        *store.PATCHES,
        *group_join.PATCHES,
        *embedded_broker.PATCHES,
        *worker.PATCHES,
    ]


def check_versions() -> list[str]:
    problems = []
    for package, wanted in PINNED.items():
        try:
            found = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found = None
        if found != wanted:
            problems.append(
                f"{package} {found or '(not installed)'} is installed, but Standing patches {package} {wanted}; "
                f"run `make install` (pip install {package}=={wanted})"
            )
    return problems


def check(patches: list[Patch] | None = None) -> None:
    """Raise IncompatibleDependency naming every version or patched function that differs."""
    problems = check_versions()
    for patch in patches if patches is not None else all_patches():
        problem = patch.check()
        if problem:
            problems.append(problem)
    if problems:
        raise IncompatibleDependency("Standing cannot start:\n  " + "\n  ".join(problems))
