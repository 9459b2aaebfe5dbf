"""MkDocs hook: lets mkdocs-click import ``dcssa.export.cli`` where torch is not installed.

``dcssa-export``'s click group imports ``dcssa.export.model`` (torch) at module level, for two
integer defaults its help prints (``DEFAULT_HEADS``, ``DEFAULT_EMBED``). The CLI reference needs only
the click objects. So where torch cannot be found (a docs-only venv such as ``.venv-docs``) this hook
imports ``dcssa.export.cli`` once with a placeholder ``torch`` in ``sys.modules`` and takes the
placeholder out again right after; mkdocs-click then finds the module already imported. Where torch
is installed (the ``.venv`` of ``make test``) the hook does nothing and the real modules are used.
The placeholder runs no model: it only lets statements like ``class X(nn.Module)`` execute.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

_MODULES = ("torch", "torch.nn", "torch.nn.functional")


class _Placeholder(types.ModuleType):
    """Any public attribute is a fresh class that accepts any arguments (so it can be subclassed,
    called, or used as a decorator)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def call(obj, *args, **kwargs):
            return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else obj

        value = type(name, (), {"__init__": lambda obj, *a, **k: None, "__call__": call})
        setattr(self, name, value)
        return value


def on_config(config, **kwargs):
    if "dcssa.export.cli" in sys.modules or importlib.util.find_spec("torch") is not None:
        return config
    placeholders = {name: _Placeholder(name) for name in _MODULES}
    placeholders["torch"].nn = placeholders["torch.nn"]
    placeholders["torch.nn"].functional = placeholders["torch.nn.functional"]
    sys.modules.update(placeholders)
    try:
        importlib.import_module("dcssa.export.cli")
    finally:
        for name in _MODULES:
            if sys.modules.get(name) is placeholders[name]:
                del sys.modules[name]
    return config
