"""Data on disk: photo folders (``photos``), synthetic shapes and tracings (``synthetic``) and the
datasets made of them (``datasets``), and the QMUL and ARNet dataset readers (``qmul``, ``arnet``).

Offline jobs (indexing, evaluation, calibration, export) read data through here; the per-stroke path
never does. This package itself holds only what the CLI needs to register ``make-dataset`` (click and
the options machinery); import the submodules directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from ..options import setting

#: the dataset layouts the commands read and write: the authors' QMUL pickle + photo/, ARNet's A/B folders
LAYOUTS = ("qmul", "arnet")


@dataclass(frozen=True)
class DatasetOptions:
    """What ``dcssa-rt make-dataset`` writes (:func:`~dcssa.runtime.data.datasets.write_synthetic`)."""

    name: str = setting("Shapes", "Dataset name DS (folder OUT/DS).")
    photos: int = setting(40, "Photos in the catalogue.", type=click.IntRange(1))
    sketches_per_photo: int = setting(1, "Tracings of each photo.", type=click.IntRange(1))
    test_share: float = setting(0.5, "Share of photos whose sketches go to the test split.", type=click.FloatRange(0, 1))
    seed: int = setting(0, "Seed of the random shapes and their tracings.", type=int)
    layout: str = setting("qmul", "qmul: DS_Coordinate + photo/ (DC-SSA); arnet: trainA/trainB/testA/testB with sketch "
                          "PNGs (plus the strokes).", flag="--format", type=click.Choice(LAYOUTS))
    force: bool = setting(False, "Replace an existing dataset folder.", is_flag=True)
