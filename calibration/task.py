"""The task yardstick of reduced precision: does the user still find the photo they are drawing?

Agreement with fp32 (same top-1, top-10 overlap) counts every swap among wrong photos as an error
and never asks about the target. Where the held-out sketches name their photo, a plan is judged
instead by the change of the on-the-fly task metrics against fp32 on the same sketches -- acc@1 and
acc@10 at every stroke and on finished sketches, m@A (mean percentile of the target) and m@B (mean
reciprocal rank), the target's mean rank -- each with a paired bootstrap bound over sketches
(:mod:`dcssa.runtime.evaluation.paired`). Ranks are those `dcssa-rt eval` computes.

The noise floor puts those changes in proportion: the same comparison for fp32 itself when the
strokes move by one pixel, or when the hand's tremor is drawn again. A plan whose loss stays inside
that floor changes results less than the user's hand does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dcssa.calibration.calibset import PrefixSet, Sketch
from dcssa.calibration.options import DEFAULT_MAX_DROP, parse_max_drop  # noqa: F401 - --max-drop lives there
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.evaluation import metrics as M
from dcssa.runtime.evaluation.paired import paired_bootstrap, sketch_values

#: agreement targets of --objective agreement (the rule before the task yardstick)
AGREEMENT_TARGETS = {"top10_overlap": 0.90, "top1_agreement": 0.90}


@dataclass
class SketchTargets:
    """Which held-out sketches have their photo in the gallery: sketch index -> gallery row."""

    sketches: list[int]
    rows: list[int]
    gallery_size: int

    def __len__(self) -> int:
        return len(self.sketches)


def sketch_targets(prefixes: PrefixSet, ids: Sequence[str]) -> SketchTargets | None:
    """The sketches whose target photo is in the gallery; None when none is (no ground truth)."""
    where = {g: i for i, g in enumerate(ids)}
    seqs = prefixes.sequences()
    ks = [k for k, s in enumerate(prefixes.sketches) if s.target in where and len(seqs[k])]
    if not ks:
        return None
    return SketchTargets(ks, [where[prefixes.sketches[k].target] for k in ks], len(ids))


def per_sketch(embeddings: np.ndarray, prefixes: PrefixSet, photos: np.ndarray, targets: SketchTargets) -> dict[str, np.ndarray]:
    """Every task metric per sketch (one value each), from the rank of the target at every stroke,
    computed as `dcssa-rt eval --compare` computes them (the same two functions)."""
    seqs = prefixes.sequences()
    ranks = [M.step_ranks(embeddings[seqs[k]], photos, t) for k, t in zip(targets.sketches, targets.rows)]
    return sketch_values(ranks, targets.gallery_size)


def means(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {m: float(np.mean(v)) for m, v in values.items()}


def compare_task(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *, seed: int = 0,
                 keys: Sequence[str] | None = None) -> dict:
    """Per metric the fp32 and candidate means and the drop with its bounds (see paired_bootstrap);
    ``keys``: the sketches' names, for bounds independent of the listing order."""
    return paired_bootstrap(reference, candidate, seed=seed, keys=keys)


def sketch_keys(prefixes: PrefixSet, targets: SketchTargets) -> list[str]:
    return [prefixes.sketches[k].name for k in targets.sketches]


# -- --max-drop and the objective of the searches --------------------------------------------------


@dataclass
class Objective:
    """What a plan must keep: the task (drop bounds) or agreement with fp32 (targets).

    ``task`` needs held-out sketches with their photos in the gallery; without them the searches
    fall back to agreement and say so (:meth:`for_report`).
    """

    kind: str = "task"
    max_drop: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MAX_DROP))
    targets: dict[str, float] = field(default_factory=lambda: dict(AGREEMENT_TARGETS))

    def __post_init__(self) -> None:
        if self.kind not in ("task", "agreement"):
            raise DcssaError(f"unknown objective {self.kind!r}", hint="use --objective task or agreement")

    def effective(self, point: dict) -> str:
        return "task" if self.kind == "task" and point.get("task") else "agreement"

    def faithful(self, point: dict) -> bool:
        """Whether a curve point / report keeps what this objective protects."""
        if self.effective(point) == "task":
            task = point["task"]
            return all(m in task and task[m]["drop_upper"] <= lim + 1e-12 for m, lim in self.max_drop.items())
        return all(point[k] >= v for k, v in self.targets.items())

    def closeness(self, point: dict) -> tuple:
        """Larger is closer to meeting the objective (for 'keep the closest' when none meets)."""
        if self.effective(point) == "task":
            task = point["task"]
            excess = sum(max(0.0, task[m]["drop_upper"] - lim) for m, lim in self.max_drop.items() if m in task)
            return (-excess, point.get("top10_overlap", 0.0), point.get("top1_agreement", 0.0))
        short = sum(max(0.0, v - point[k]) for k, v in self.targets.items())
        return (-short, point.get("top10_overlap", 0.0), point.get("top1_agreement", 0.0))

    def describe(self) -> str:
        if self.kind == "task":
            return "task accuracy: " + ", ".join(f"{m} drop <= {v:g}" for m, v in self.max_drop.items()) + \
                   " (one-sided 95% upper bound over held-out sketches)"
        return "agreement with fp32: " + ", ".join(f"{k} >= {v:.0%}" for k, v in self.targets.items())

    def record(self) -> dict:
        return {"kind": self.kind, "max_drop": dict(self.max_drop), "agreement_targets": dict(self.targets),
                "rule": self.describe()}


# -- the noise floor ---------------------------------------------------------------------------------

#: perturbations no user controls, in pixels of the 256 input frame
PERTURBATIONS = ("shift-1px", "jitter-1px")


def perturb(sketches: Sequence[Sketch], kind: str, *, seed: int = 1) -> list[Sketch]:
    """The same sketches moved by one pixel (right and down), or every point jittered by N(0, 1 px)."""
    rng = np.random.default_rng(seed)
    out = []
    for s in sketches:
        strokes = []
        for st in s.strokes:
            st = np.array(st, dtype=np.float64, copy=True)
            if kind == "shift-1px":
                st[:, :2] += 1.0
            elif kind == "jitter-1px":
                st[:, :2] += rng.normal(0.0, 1.0, size=st[:, :2].shape)
            else:
                raise ValueError(f"unknown perturbation {kind!r}")
            st[:, :2] = np.clip(st[:, :2], 0.0, 255.0)
            strokes.append(st)
        out.append(Sketch(s.name, strokes, s.target, s.split))
    return out
