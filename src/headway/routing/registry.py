"""The plugin registry: one place that maps a `type` name to its `PluginSpec`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from headway.routing.decision import PluginKind
from headway.routing.plugin import PluginSpec
from headway.routing.plugins import BUILTIN_SPECS


class Registry:
    """Plugin specs by type. Types are unique; registering one twice is an error."""

    def __init__(self, specs: Iterable[PluginSpec[Any]] = ()) -> None:
        self._specs: dict[str, PluginSpec[Any]] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: PluginSpec[Any]) -> None:
        if spec.type in self._specs:
            raise ValueError(f"plugin type {spec.type!r} is already registered")
        self._specs[spec.type] = spec

    def get(self, type_: str) -> PluginSpec[Any]:
        """The spec for `type_`; KeyError when unknown."""
        return self._specs[type_]

    def __contains__(self, type_: object) -> bool:
        return type_ in self._specs

    def specs(self, kind: PluginKind | None = None) -> tuple[PluginSpec[Any], ...]:
        """All specs (of `kind`, if given), sorted by type."""
        return tuple(s for t, s in sorted(self._specs.items()) if kind is None or s.kind is kind)


def default_registry() -> Registry:
    """A new registry holding the built-in plugins."""
    return Registry(BUILTIN_SPECS)
