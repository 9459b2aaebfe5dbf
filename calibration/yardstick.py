"""What every precision stage is measured against, computed once: :class:`Yardstick` and :func:`prepare`.

The fp16, int8 (ours or NNCF's) and bf16 stages, the searches and NNCF's validation function all
judge a candidate the same way: on the same held-out stroke prefixes, ranking the same gallery,
against the same fp32 reference, by the same objective. They share one yardstick instead of each
carrying its parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dcssa.calibration import fidelity as fd
from dcssa.calibration import task as T
from dcssa.calibration.calibset import PrefixSet, bundle_prefix_set, load_sketch_data, split_heldout, spread_sketches
from dcssa.calibration.options import CalibrationOptions, legacy_options
from dcssa.runtime.backends import Backend, get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.progress import Progress, Say, silent


@dataclass(frozen=True)
class Yardstick:
    """The bundle, its calibration and held-out prefixes, the gallery they rank, the fp32 reference on
    them, the backend that ran it, the objective a plan must keep, the work folder and where progress
    goes (``say`` for steps; bars unless ``quiet``). ``noise``: the noise floor, when measured."""

    bundle: Bundle
    data: str
    calib: PrefixSet
    held: PrefixSet
    gallery: fd.GalleryMatrix
    ref: fd.Reference
    backend: Backend
    work: Path
    objective: T.Objective = field(default_factory=T.Objective)
    noise: dict = field(default_factory=dict)
    say: Say = silent
    quiet: bool = False

    @property
    def fp32(self) -> Path:
        """The fp32 sketch encoder every candidate replaces."""
        return self.bundle.graph_path(mf.SKETCH_ENCODER, "fp32")

    def bar(self, total: int, desc: str):
        return Progress(self.quiet).bar(total, desc, "raster")

    def report(self, candidate: Path, precision: str, *, latency_rasters: int, **kw: Any) -> dict:
        """The fidelity report of a candidate sketch encoder against this yardstick
        (:func:`~.fidelity.fidelity_report`; ``kw``: its other keywords)."""
        return fd.fidelity_report(self.bundle, candidate, precision, self.held, self.gallery, self.ref,
                                  backend=self.backend, latency_rasters=latency_rasters, objective=self.objective,
                                  **kw)


def _split(bundle: Bundle, data: str | Path, options: CalibrationOptions, say: Say):
    """(sketch data, calibration prefixes, held-out prefixes, held-out sketches), split by sketch."""
    say(f"reading calibration data: {data}")
    sk = load_sketch_data(data)
    calib_sketches, held_sketches = split_heldout(sk.sketches, options.heldout_share)
    calib = bundle_prefix_set(bundle, calib_sketches).subsample(options.max_calib)
    held = bundle_prefix_set(bundle, spread_sketches(held_sketches, options.max_heldout))  # whole sketches: causal head
    say(f"{len(calib)} calibration prefixes ({len(calib_sketches)} sketches), "
        f"{len(held)} held-out prefixes ({len(held.sketches)} of {len(held_sketches)} sketches)")
    return sk, calib, held, held_sketches


def _noise_floor(yard: Yardstick) -> dict:
    with yard.bar(len(yard.held) * len(T.PERTURBATIONS), "noise floor (fp32, moved strokes)") as bar:
        noise = fd.noise_floor(yard.bundle, yard.held, yard.gallery, yard.ref, yard.backend, on_batch=bar.update)
    for kind, rec in noise.items():
        yard.say(fd.noise_line(kind, rec))
    return noise


def prepare(bundle: Bundle, data: str | Path, work: Path, options: CalibrationOptions | None = None, *,
            say: Say = silent, quiet: bool = False, **legacy: Any) -> Yardstick:
    """Read the sketches, split them by sketch, rank the gallery and run the fp32 reference once
    (and the noise floor: fp32 on the same sketches moved by a pixel, jittered again).

    ``legacy``: the 0.1 keyword arguments (``gallery=``, ``max_calib=``, ...), deprecated.
    """
    options = legacy_options(options, legacy)
    backend = get_backend("ort-cpu", threads=options.threads)
    sk, calib, held, held_sketches = _split(bundle, data, options, say)
    # the gallery of every held-out sketch, as `dcssa-rt eval --limit` keeps every photo of the split
    gallery = options.fidelity_gallery
    gal = fd.protocol_gallery(fd.gallery_matrix(bundle, photos=options.photos or (None if gallery else sk.photos),
                                                gallery=gallery, backend=backend), held_sketches)
    say(f"fidelity gallery: {len(gal.ids)} photos ({gal.rule})")
    with Progress(quiet).bar(len(held), "fp32 reference", "raster") as bar:
        ref = fd.reference(bundle, held, gal, backend, on_batch=bar.update)
    objective = T.Objective(options.objective, dict(options.max_drop))
    if ref.task is None:
        say("the held-out sketches name no photo of the gallery: agreement with fp32 is the only yardstick")
    else:
        say(f"task yardstick on {len(ref.targets)} held-out sketches with their photo; {objective.describe()}")
    yard = Yardstick(bundle, str(data), calib, held, gal, ref, backend, work, objective, say=say, quiet=quiet)
    return replace(yard, noise=_noise_floor(yard)) if options.noise_floor else yard
