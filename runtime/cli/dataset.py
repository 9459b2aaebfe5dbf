"""``dcssa-rt make-dataset``: a synthetic dataset in the QMUL or ARNet layout, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..data import DatasetOptions
from ..options import click_options, from_cli
from .console import fail_cleanly
from .options import output_options


@click.command("make-dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click_options(DatasetOptions, exclude=["force"])
@output_options(json="the dataset folder", quiet=False)
@click_options(DatasetOptions, only=["force"])
def make_dataset(out: Path, as_json: bool, **settings) -> None:
    """Write a SYNTHETIC dataset in the authors' QMUL layout (for tests and demos).

    Photos are line drawings of random outlined shapes; sketches are jittered tracings of them, with
    strokes in random order. It is synthetic: numbers on it say nothing about real catalogues.
    Also writes each tracing as strokes JSON under OUT/DS/strokes/ for `dcssa-rt query`.
    """
    from ..data.datasets import write_synthetic

    with fail_cleanly():
        root = write_synthetic(out, from_cli(DatasetOptions, settings)[0])
    click.echo(json.dumps({"path": str(root)}) if as_json else f"synthetic dataset written: {root}")
