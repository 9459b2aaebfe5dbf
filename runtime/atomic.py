"""Write a folder completely or not at all: build it under a temporary name, then rename it in."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DcssaError


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise DcssaError("already exists", path=out, hint="pass --force to replace it, or choose another --out")


@contextlib.contextmanager
def staged_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out``, on any error it vanishes.

    The old ``out`` (with ``force``) is moved aside and deleted only after the new one is in place,
    so an interrupted run never leaves a half-written folder under the real name.
    """
    out = Path(out)
    refuse_existing(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
