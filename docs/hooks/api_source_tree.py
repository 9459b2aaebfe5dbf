"""MkDocs hook: lets mkdocstrings (griffe) find the ``dcssa.*`` packages it documents.

pyproject.toml maps each package to a folder of another name (``dcssa.runtime`` -> ``runtime/``,
setuptools ``package-dir``), so there is no ``dcssa/runtime/`` folder for griffe's static finder to
walk, and its import fallback cannot reach setuptools' editable finder either. This hook asks Python
where it imports each ``dcssa.<name>`` package from, builds a temporary ``dcssa/`` folder of symlinks
to those folders, and puts it first in the python handler's ``paths``. It follows the package
wherever pyproject maps it, so it needs no change when the code moves; a package that cannot be
found is left out (then a ``::: dcssa.<name>`` block naming it fails the strict build, as it should).
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from mkdocs.plugins import event_priority

PACKAGES = ("runtime", "export", "calibration", "benchmarks")

_tree: Path | None = None


def _build_tree() -> Path:
    root = Path(tempfile.mkdtemp(prefix="dcssa-docs-api-"))
    (root / "dcssa").mkdir()
    for name in PACKAGES:
        try:
            spec = importlib.util.find_spec(f"dcssa.{name}")
        except ImportError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        (root / "dcssa" / name).symlink_to(Path(list(spec.submodule_search_locations)[0]).resolve(),
                                           target_is_directory=True)
    return root


@event_priority(100)  # before mkdocstrings' on_config, which creates the python handler
def on_config(config, **kwargs):
    global _tree
    if _tree is None:
        _tree = _build_tree()
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    paths = python.setdefault("paths", ["."])
    if str(_tree) not in paths:
        paths.insert(0, str(_tree))
    return config


def on_shutdown(**kwargs):
    global _tree
    if _tree is not None:
        shutil.rmtree(_tree, ignore_errors=True)
        _tree = None
