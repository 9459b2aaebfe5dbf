"""One progress reporter for every long job: timestamped step lines, warnings and bars, on stderr.

A long job takes one :class:`Reporter` and reports everything through it: ``report("step")``,
``report.warn("something skipped")`` and ``with report.bar(n, "photos") as bar``. Library functions
never print themselves: their default is :data:`SILENT`, and the CLIs hand them a :class:`Progress`.
Progress never touches stdout. Both ``-q`` and ``--json`` silence its step lines and bars (a script
that asks for JSON gets the JSON on stdout and only warnings and errors on stderr, so its logs stay
free of carriage-return bars). The Python API can route steps and warnings to its own callables with
:class:`Callbacks`. Functions that only report steps take a :data:`Say`; every Reporter is one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

#: what a library function calls to report a step ("export: sketch encoder")
Say = Callable[[str], None]


def silent(_message: str) -> None:
    """The default :data:`Say`: report nothing."""


def warning(message: str, stream: Any = None) -> None:
    """One ``warning: ...`` line on ``stream`` (default stderr): how every command and job warns."""
    print(f"warning: {message}", file=stream or sys.stderr, flush=True)


def tqdm_bar(total: int | None, desc: str, unit: str = "it", *, leave: bool = False, disable: bool = False,
             stream: Any = None):
    """A tqdm bar on ``stream`` (default stderr); use it as a context manager."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=stream or sys.stderr)


class Reporter(Protocol):
    """What a long job reports through: steps, warnings (something skipped or suspicious) and bars."""

    def __call__(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def bar(self, total: int | None, desc: str, unit: str = "it", *, leave: bool = False) -> Any: ...


class Progress:
    """``progress("step")`` prints ``[  12.3s] step`` to stderr; ``progress.bar(...)`` is a tqdm bar;
    ``progress.warn(...)`` prints ``warning: ...`` even when quiet (a warning is not progress)."""

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

    def warn(self, message: str) -> None:
        warning(message, self.stream)

    def bar(self, total: int | None, desc: str, unit: str = "it", *, leave: bool = False):
        """A tqdm bar on stderr (disabled when quiet); use it as a context manager."""
        return tqdm_bar(total, desc, unit, leave=leave, disable=self.quiet, stream=self.stream)


@dataclass(frozen=True)
class Callbacks:
    """A :class:`Reporter` for the Python API: steps to ``say``, warnings to ``warn`` (both silent by
    default), tqdm bars on stderr only with ``bars``."""

    say: Say = silent
    warn: Say = silent
    bars: bool = False

    def __call__(self, message: str) -> None:
        self.say(message)

    def bar(self, total: int | None, desc: str, unit: str = "it", *, leave: bool = False):
        return tqdm_bar(total, desc, unit, leave=leave, disable=not self.bars)


#: the default reporter of every library function: nothing on stderr
SILENT: Reporter = Callbacks()
