"""One progress reporter for every long job: timestamped step lines and bars, on stderr.

Library functions take a :data:`Say` callable (default: silent) and never print themselves; the
CLIs hand them a :class:`Progress`. Progress never touches stdout. Both ``-q`` and ``--json`` silence
it (step lines and bars alike): a script that asks for JSON gets the JSON on stdout and only errors on
stderr, so its logs stay free of carriage-return bars.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

#: what a library function calls to report a step ("export: sketch encoder")
Say = Callable[[str], None]


def silent(_message: str) -> None:
    """The default :data:`Say`: report nothing."""


class Progress:
    """``progress("step")`` prints ``[  12.3s] step`` to stderr; ``progress.bar(...)`` is a tqdm bar."""

    def __init__(self, quiet: bool = False, *, prefix: str = "", stream: Any = None) -> None:
        self.quiet = quiet
        self.prefix = prefix
        self.stream = stream
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        stream = self.stream or sys.stderr
        print(f"[{time.perf_counter() - self.t0:7.1f}s] {self.prefix}{message}", file=stream, flush=True)

    def bar(self, total: int | None, desc: str, unit: str = "it", *, leave: bool = False):
        """A tqdm bar on stderr (disabled when quiet); use it as a context manager."""
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, disable=self.quiet, leave=leave, file=self.stream or sys.stderr)
