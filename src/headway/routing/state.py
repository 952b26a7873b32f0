"""State scopes of the scheduler, and the per-request scratch.

Three scopes, each with its own type, so a reader can tell where state lives:

* per-request scratch: `RequestScratch`, created fresh by the framework for each
  profile run and dropped afterwards. Plugins of one run may share work through it
  (e.g. prefix-match lengths computed once). It also carries the run's `now`.
* per-plugin-instance: a plugin object that keeps state across decisions (a cursor,
  a prefix index) implements `StatefulPlugin.observe` (routing.plugin). The framework
  calls `observe` only after the caller commits a decision, never inside one, so a
  decision is a pure function of its inputs.
* per-endpoint snapshot: `EndpointSnapshot` (routing.endpoint), immutable values
  built by the collectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar, cast

_T = TypeVar("_T")


@dataclass(frozen=True)
class ScratchKey(Generic[_T]):
    """A typed key into `RequestScratch`; define one per value as a module constant."""

    name: str


class RequestScratch:
    """Per-request working memory for one profile run.

    Keys are write-once: a second `put` of the same key raises, so the order in which
    plugins run can never silently change what a later plugin reads.
    """

    __slots__ = ("_values", "now")

    def __init__(self, now: float) -> None:
        self.now = now  # the decision's time, identical for every plugin call
        self._values: dict[str, object] = {}

    def put(self, key: ScratchKey[_T], value: _T) -> None:
        if key.name in self._values:
            raise KeyError(f"scratch key {key.name!r} already written in this run")
        self._values[key.name] = value

    def get(self, key: ScratchKey[_T]) -> _T:
        """The value under `key`; KeyError when no plugin wrote it in this run."""
        return cast(_T, self._values[key.name])

    def __contains__(self, key: ScratchKey[_T]) -> bool:
        return key.name in self._values
