"""Proof that the exported graphs compute what the PyTorch reference computes.

Every graph is run through the runtime's own onnxruntime backend on generated inputs (rasterised
synthetic partial sketches, synthetic photos of two sizes) and compared with the reference modules
of :mod:`dcssa.export.model`. The step graph is driven stroke by stroke exactly as a live session
drives it and compared with the last row of the full reference head on each prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcssa.export.model import DCSSA
from dcssa.runtime.backends import Backend, Runner, get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.data.synthetic import random_sketch, textured_photo
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.progress import Say, silent
from dcssa.runtime.stroke.head import CausalHead
from dcssa.runtime.stroke.pipeline import PhotoPipeline, SketchPipeline

TOLERANCE = 1e-4
PARITY_STROKES = 24
LONG_SEQUENCE = 256


class ParityError(DcssaError):
    """An exported graph disagrees with the PyTorch reference beyond the tolerance."""


def partial_sketch_rasters(seed: int, strokes: int = PARITY_STROKES) -> np.ndarray:
    """The preprocessed raster after each stroke of one synthetic sketch: (strokes, 3, 299, 299)."""
    return SketchPipeline().prefix_images(random_sketch(np.random.default_rng(seed), strokes))


def synthetic_photos(seed: int, sizes: tuple[tuple[int, int], ...] = ((299, 299), (380, 299))) -> list[np.ndarray]:
    """Preprocessed photos (1, 3, h, w), one per (width, height), going through the photo pipeline."""
    rng = np.random.default_rng(seed)
    pipeline = PhotoPipeline()
    return [pipeline.preprocess(textured_photo(rng, w, h)) for w, h in sizes]


def max_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    """The largest absolute difference of two arrays, in float64."""
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


class _Check:
    """The graphs of one export folder, run on the runtime's own onnxruntime backend."""

    def __init__(self, model: DCSSA, folder: Path, backend: Backend, tolerance: float) -> None:
        self.ref, self.folder, self.backend, self.tolerance = model, folder, backend, tolerance
        self.report: dict[str, dict] = {}

    def load(self, name: str) -> Runner:
        return self.backend.load(self.folder / f"{name}.onnx", mf.graph_spec(name))

    def record(self, name: str, err: float, what: str) -> None:
        self.report[name] = {"max_abs_err": err, "tolerance": self.tolerance, "inputs": what,
                             "passed": err <= self.tolerance}

    @torch.no_grad()
    def sketch_encoder(self, rasters: np.ndarray) -> torch.Tensor:
        enc = self.load(mf.SKETCH_ENCODER)
        got = np.concatenate([enc.run({mf.IMAGES: rasters[i : i + 8]})[mf.FEATURES] for i in range(0, len(rasters), 8)])
        features = self.ref.sketch_feature(torch.from_numpy(rasters))
        self.record(mf.SKETCH_ENCODER, max_abs_error(got, features.numpy()),
                    f"{len(rasters)} rasterised partial sketches, batches of 8")
        return features

    @torch.no_grad()
    def photo_encoder(self, photos: list[np.ndarray]) -> None:
        pen = self.load(mf.PHOTO_ENCODER)
        worst = max(max_abs_error(pen.run({mf.IMAGES: p})[mf.EMBEDDINGS],
                                  self.ref.photo_embedding(torch.from_numpy(p)).numpy()) for p in photos)
        sizes = ", ".join(f"{p.shape[3]}x{p.shape[2]}" for p in photos)
        self.record(mf.PHOTO_ENCODER, worst, f"synthetic photos of sizes {sizes}")

    @torch.no_grad()
    def head_full(self, seq: torch.Tensor) -> None:
        full = self.load(mf.HEAD_FULL)
        got = full.run({mf.FEATURES: seq.numpy()})[mf.EMBEDDINGS]
        self.record(mf.HEAD_FULL, max_abs_error(got, self.ref.attn(seq).numpy()), f"T={len(seq)}")

    @torch.no_grad()
    def head_step(self, seq: torch.Tensor, seed: int) -> None:
        """Stroke by stroke from an empty cache (as a session drives it), then at the stroke bound."""
        step = self.load(mf.HEAD_STEP)
        got = CausalHead.embed_sequence(step, seq.numpy(), cache_dtype=None)  # the graph's maths, not storage
        worst = max(max_abs_error(got[t], self.ref.attn(seq[: t + 1])[-1].numpy()) for t in range(len(seq)))
        # at the session's stroke bound, from a cache filled with realistic rows
        rng = np.random.default_rng(seed + 1)
        d = seq.shape[1]
        long_seq = seq[rng.integers(0, len(seq), LONG_SEQUENCE)]
        long_seq = torch.nn.functional.normalize(
            long_seq + torch.from_numpy(rng.normal(0, 0.01, (LONG_SEQUENCE, d)).astype(np.float32)), dim=-1)
        a = self.ref.attn.norm(long_seq[:-1])
        w, b = self.ref.attn.mha.in_proj_weight, self.ref.attn.mha.in_proj_bias
        k_cache = (a @ w[d : 2 * d].T + b[d : 2 * d]).numpy()
        v_cache = (a @ w[2 * d :].T + b[2 * d :]).numpy()
        out = step.run({mf.FEATURE: long_seq[-1:].numpy(), mf.PAST_KEYS: k_cache, mf.PAST_VALUES: v_cache})
        worst = max(worst, max_abs_error(out[mf.EMBEDDING][0], self.ref.attn(long_seq)[-1].numpy()))
        self.record(mf.HEAD_STEP, worst,
                    f"stroke by stroke over {len(seq)} strokes from an empty cache, and at T={LONG_SEQUENCE}")

    @torch.no_grad()
    def sketch_projection(self, features: torch.Tensor) -> None:
        proj = self.load(mf.SKETCH_PROJECTION)
        got = proj.run({mf.FEATURES: features.numpy()})[mf.EMBEDDINGS]
        self.record(mf.SKETCH_PROJECTION, max_abs_error(got, self.ref.sketch_linear(features).numpy()),
                    f"N={len(features)}")


def check_parity(model: DCSSA, folder: Path, *, seed: int = 0, tolerance: float = TOLERANCE,
                 progress: Say = silent) -> dict:
    """Run each graph in ``folder`` against ``model``; return the report, raise if any exceeds it."""
    check = _Check(model.eval(), folder, get_backend("ort-cpu"), tolerance)
    progress("parity: sketch encoder")
    features = check.sketch_encoder(partial_sketch_rasters(seed))  # reference step features
    progress("parity: photo encoder")
    check.photo_encoder(synthetic_photos(seed))
    if model.phase == 2:
        progress("parity: stroke head (full and step)")
        check.head_full(features)
        check.head_step(features, seed)
    else:
        progress("parity: sketch projection")
        check.sketch_projection(features)
    failed = {k: v for k, v in check.report.items() if not v["passed"]}
    if failed:
        lines = ", ".join(f"{k}: max abs error {v['max_abs_err']:.2e} > {tolerance:.0e}" for k, v in failed.items())
        raise ParityError(
            f"exported graphs disagree with the PyTorch reference ({lines})",
            path=folder,
            hint="check --num-heads (it cannot be read from the weights; the authors use 8) and the checkpoint",
        )
    return check.report
