"""Shared CLI behaviour: user errors become one clear message and a non-zero exit, not a traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import click

from .errors import DcssaError

DEMO_WARNING = (
    "note: this bundle was exported from a DEMO checkpoint (synthetic weights): "
    "its rankings demonstrate the pipeline, not retrieval quality."
)


@contextlib.contextmanager
def fail_cleanly() -> Iterator[None]:
    try:
        yield
    except DcssaError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted; nothing half-written was left behind", err=True)
        sys.exit(130)
