"""``dcssa-rt eval`` (on-the-fly retrieval accuracy of a bundle on a dataset) and ``dcssa-rt
calibrate-confidence`` (the per-stroke confidence fitted and measured).

This package holds only the options of those two jobs (:class:`EvalOptions`, :class:`ConfidenceOptions`):
each setting's default and help written once, the CLI generated from them. It imports click and the
options machinery alone, so that ``dcssa.runtime.cli`` registers the commands without loading numpy
code paths it does not need; import the submodules (``run``, ``fit_confidence``, ``metrics``,
``protocols``, ``report``) directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from ..data import LAYOUTS
from ..options import OptionsError, setting
from ..session import DEFAULT_BACKEND, DEFAULT_PRECISION

PROTOCOLS = ("causal", "paper")
STEP_KINDS = ("strokes", "points20")


@dataclass(frozen=True)
class RunConfig:
    """One run of an evaluation: the backend (a name; ``auto`` resolved here) and the precision."""

    backend: str
    precision: str


@dataclass(frozen=True)
class EvalOptions:
    """How ``dcssa-rt eval`` runs. ``configs``: the runs compared, side by side (the CLI's --backend and
    --precision, or --compare); ``threads``: the CLI's shared --threads."""

    layout: str = setting(
        "qmul", "arnet: ARNet's layout (A = sketch PNGs x_?.png or x_??.png, B = photos): the authors' acc@1/5/10, "
        "and the on-the-fly curves when <Name>_Coordinate holds the strokes.", flag="--format", type=click.Choice(LAYOUTS))
    split: str = setting("test", "Sketches whose key contains this word; the gallery is the photos they target.",
                         type=click.Choice(["test", "train"]))
    protocol: str = setting(
        "causal", "causal: what a live user gets (stroke session, prefix by prefix); paper: the authors' non-causal "
        "protocol and their metric code, reported beside corrected values.", type=click.Choice(PROTOCOLS))
    steps: str | None = setting(
        None, "Partial sketches cut at pen-up (strokes) or the authors' 20 point slices (points20) [default: strokes "
        "for causal, points20 for paper; paper needs points20].", type=click.Choice(STEP_KINDS))
    gallery: Path | None = setting(
        None, "Photo gallery to reuse when this bundle's photo encoder built it from the dataset's photo folder "
        "[default: OUT/gallery]; otherwise one is built into OUT/gallery.", type=click.Path(path_type=Path))
    limit: int | None = setting(None, "Evaluate only the first N sketches (the gallery keeps every photo of the split).",
                                type=click.IntRange(1))
    force: bool = setting(False, "Replace an existing OUT folder.", is_flag=True)
    configs: tuple[RunConfig, ...] = setting(default_factory=lambda: (RunConfig(DEFAULT_BACKEND, DEFAULT_PRECISION),),
                                             help="The runs compared (backend, precision).", cli=False)
    threads: int | None = setting(None, "Intra-op threads.", cli=False)

    def __post_init__(self) -> None:
        if self.protocol == "paper" and self.steps == "strokes":
            raise OptionsError("the paper protocol slices by points: use points20 (or --protocol causal)", flag="--steps")
        if not self.configs:
            raise OptionsError("no run to evaluate (configs is empty)")

    @property
    def step_kind(self) -> str:
        """``steps``, else the protocol's own: strokes for causal, points20 for paper."""
        return self.steps or ("points20" if self.protocol == "paper" else "strokes")


@dataclass(frozen=True)
class ConfidenceOptions:
    """How ``dcssa-rt calibrate-confidence`` fits and measures; ``backend``, ``precision`` and ``threads``
    are the CLI's shared runtime options."""

    layout: str = setting("qmul", "arnet: ARNet's layout, strokes from <Name>_Coordinate beside it; index trainB "
                          "and testB together.", flag="--format", type=click.Choice(LAYOUTS))
    fit_split: str = setting("train", "Sketches the calibrator is fitted on.", type=click.Choice(["train", "test"]))
    holdout_split: str = setting("test", "Held-out sketches it is measured on (reliability, ECE, Brier, early stop).",
                                 type=click.Choice(["train", "test"]))
    limit: int | None = setting(None, "Use only the first N sketches of each split.", type=click.IntRange(1))
    force: bool = setting(False, "Replace an existing OUT folder and the gallery's calibrator.", is_flag=True)
    backend: str = setting(DEFAULT_BACKEND, "Backend name (auto: the fastest available here).", cli=False)
    precision: str = setting(DEFAULT_PRECISION, "Graph precision or execution mode.", cli=False)
    threads: int | None = setting(None, "Intra-op threads.", cli=False)

    def __post_init__(self) -> None:
        if self.fit_split == self.holdout_split:
            raise OptionsError(f"--fit-split and --holdout-split are both {self.fit_split!r}: the measurement must use "
                               "other sketches", hint="e.g. --fit-split train --holdout-split test")
