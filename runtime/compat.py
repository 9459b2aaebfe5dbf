"""Import paths of the flat 0.1 layout, kept working for one release (they go in 0.3).

The modules moved into subpackages (see docs/architecture.md); an old path such as
``dcssa.runtime.gallery`` still imports, as an alias whose names come from the new modules, with a
DeprecationWarning naming them. Each top-level package installs its own table of old paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Mapping, Sequence

#: the release that removes the old paths
REMOVED_IN = "0.3"


class AliasModule(types.ModuleType):
    """An old module path: attribute look-ups go to the new modules, in order."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Deprecated alias of {', '.join(targets)} (removed in dcssa-rt {REMOVED_IN}).")
        self.__dict__["_targets"] = tuple(targets)

    def __getattr__(self, attr: str):
        for target in self.__dict__["_targets"]:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self.__dict__['_targets'])}) has no "
                             f"attribute {attr!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__dict__["_targets"]:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths of one table and loads them as :class:`AliasModule` objects."""

    def __init__(self, aliases: Mapping[str, Sequence[str]]) -> None:
        self.aliases = dict(aliases)

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname in self.aliases:
            return importlib.machinery.ModuleSpec(fullname, self)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = self.aliases[spec.name]
        warnings.warn(f"{spec.name} moved to {' and '.join(targets)}; the old path goes in dcssa-rt {REMOVED_IN}",
                      DeprecationWarning, stacklevel=3)
        return AliasModule(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the names are looked up in the new modules when used."""


def install(aliases: Mapping[str, Sequence[str]]) -> None:
    """Make the old paths of ``aliases`` importable (once per table, however often this is called)."""
    for finder in sys.meta_path:
        if isinstance(finder, AliasFinder) and finder.aliases == dict(aliases):
            return
    sys.meta_path.append(AliasFinder(aliases))
