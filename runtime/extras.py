"""The one way optional backend libraries are imported: lazily, with an install hint on failure."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import BackendError


def optional_import(module: str, *, needed_for: str, install: str) -> ModuleType:
    """Import ``module`` or raise a BackendError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(f"{needed_for} needs the {module.split('.')[0]} package ({exc.name or exc} not importable)",
                           hint=install) from None
