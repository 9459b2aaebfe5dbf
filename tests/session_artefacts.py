"""Session artefacts shared by pytest-xdist workers (``make test`` runs the suite on every core)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def shared(tmp_path_factory, name: str, make: Callable[[Path], Path]) -> Path:
    """A session artefact made once per run, also when pytest-xdist splits the run over workers.

    ``make(folder)`` writes into an empty folder and returns the artefact's path. Under xdist the
    first worker to ask makes it (the others wait on a file lock, then reuse it): the demo checkpoint
    and its bundles take minutes of CPU, which two workers would otherwise spend twice."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    done = root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if done.is_file():
            return Path(done.read_text())
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)  # a worker that failed half-way
        folder.mkdir()
        made = make(folder)
        done.write_text(str(made))
        return made
