"""Shared CLI behaviour: user errors become one clear message and a non-zero exit, not a traceback;
warnings and progress go to stderr, so stdout holds only what the command was asked for."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from ..errors import DcssaError
from ..options import OptionsError
from ..progress import warning


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    try:
        yield
    except OptionsError as exc:  # settings that contradict each other: a usage error, as click reports its own
        if exc.flag is not None:
            raise click.BadParameter(exc.message, param_hint=exc.flag) from None
        raise click.UsageError(str(exc)) from None
    except DcssaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was left behind", err=True)
        sys.exit(130)


def warn(message: str) -> None:
    """A command's warning for something skipped or suspicious: one stderr line (as its jobs' reporter writes)."""
    warning(message)


@contextlib.contextmanager
def stdout_for_json(as_json: bool) -> Iterator[None]:
    """Under --json, send whatever the work prints to stdout (onnxruntime's calibrators do) to stderr,
    so that stdout carries only the JSON document printed afterwards. The CLI owns the process: a
    library call must not do this itself."""
    if not as_json:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield
