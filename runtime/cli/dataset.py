"""``dcssa-rt make-dataset``: a synthetic dataset in the QMUL or ARNet layout, for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .console import fail_cleanly
from .options import output_options


@click.command("make-dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", default="Shapes", show_default=True, help="Dataset name DS (folder OUT/DS).")
@click.option("--photos", "n_photos", type=click.IntRange(1), default=40, show_default=True)
@click.option("--sketches-per-photo", type=click.IntRange(1), default=1, show_default=True)
@click.option("--test-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of photos whose sketches go to the test split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "layout", type=click.Choice(["qmul", "arnet"]), default="qmul", show_default=True,
              help="qmul: DS_Coordinate + photo/ (DC-SSA); arnet: trainA/trainB/testA/testB with sketch PNGs "
                   "(plus the strokes).")
@output_options(json="the dataset folder", quiet=False, force="dataset folder")
def make_dataset(out: Path, name: str, n_photos: int, sketches_per_photo: int, test_share: float, seed: int,
                 layout: str, as_json: bool, force: bool) -> None:
    """Write a SYNTHETIC dataset in the authors' QMUL layout (for tests and demos).

    Photos are line drawings of random outlined shapes; sketches are jittered tracings of them, with
    strokes in random order. It is synthetic: numbers on it say nothing about real catalogues.
    Also writes each tracing as strokes JSON under OUT/DS/strokes/ for `dcssa-rt query`.
    """
    from ..data.datasets import write_arnet_dataset, write_dataset

    write = write_arnet_dataset if layout == "arnet" else write_dataset
    with fail_cleanly():
        root = write(out, name=name, photos=n_photos, sketches_per_photo=sketches_per_photo,
                     test_share=test_share, seed=seed, force=force)
    click.echo(json.dumps({"path": str(root)}) if as_json else f"synthetic dataset written: {root}")
