"""Proof that the exported graphs compute what the PyTorch reference computes.

Every graph is run through the runtime's own onnxruntime backend on generated inputs (rasterised
synthetic partial sketches, synthetic photos of two sizes) and compared with the reference modules
of :mod:`dcssa.export.model`. The step graph is driven stroke by stroke exactly as a live session
drives it and compared with the last row of the full reference head on each prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dcssa.runtime import manifest as mf
from dcssa.runtime.backends import get_backend
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.raster import Canvas, Preprocessor, preprocess_photo
from dcssa.runtime.synthetic import random_sketch, textured_photo

from .model import DCSSA

TOLERANCE = 1e-4
PARITY_STROKES = 24
LONG_SEQUENCE = 256


class ParityError(DcssaError):
    """An exported graph disagrees with the PyTorch reference beyond the tolerance."""


def partial_sketch_rasters(seed: int, strokes: int = PARITY_STROKES) -> np.ndarray:
    """The preprocessed raster after each stroke of one synthetic sketch: (strokes, 3, 299, 299)."""
    rng = np.random.default_rng(seed)
    canvas, pre = Canvas(), Preprocessor.default()
    out = []
    for stroke in random_sketch(rng, strokes):
        canvas.add_stroke(stroke)
        out.append(pre(canvas.image)[0])
    return np.stack(out)


def synthetic_photos(seed: int, sizes: tuple[tuple[int, int], ...] = ((299, 299), (380, 299))) -> list[np.ndarray]:
    """Preprocessed photos (1, 3, h, w), one per (width, height), going through the photo recipe."""
    rng = np.random.default_rng(seed)
    recipe = mf.default_preprocessing()["photo"]
    return [preprocess_photo(textured_photo(rng, w, h), recipe) for w, h in sizes]


def _err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def check_parity(
    model: DCSSA,
    folder: Path,
    *,
    seed: int = 0,
    tolerance: float = TOLERANCE,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run each graph in ``folder`` against ``model``; return the report, raise if any exceeds it."""
    say = progress or (lambda _msg: None)
    backend = get_backend("ort-cpu")
    ref = model.eval()
    report: dict[str, dict] = {}

    def record(name: str, err: float, what: str) -> None:
        report[name] = {"max_abs_err": err, "tolerance": tolerance, "inputs": what, "passed": err <= tolerance}

    say("parity: sketch encoder")
    rasters = partial_sketch_rasters(seed)
    enc = backend.load(folder / f"{mf.SKETCH_ENCODER}.onnx")
    got = np.concatenate([enc.run({"images": rasters[i : i + 8]})["features"] for i in range(0, len(rasters), 8)])
    with torch.no_grad():
        features = ref.sketch_feature(torch.from_numpy(rasters))
    record(mf.SKETCH_ENCODER, _err(got, features.numpy()), f"{len(rasters)} rasterised partial sketches, batches of 8")

    say("parity: photo encoder")
    photos = synthetic_photos(seed)
    pen = backend.load(folder / f"{mf.PHOTO_ENCODER}.onnx")
    worst = 0.0
    for photo in photos:
        with torch.no_grad():
            want = ref.photo_embedding(torch.from_numpy(photo)).numpy()
        worst = max(worst, _err(pen.run({"images": photo})["embeddings"], want))
    sizes = ", ".join(f"{p.shape[3]}x{p.shape[2]}" for p in photos)
    record(mf.PHOTO_ENCODER, worst, f"synthetic photos of sizes {sizes}")

    if model.phase == 2:
        say("parity: stroke head (full and step)")
        seq = features  # reference step features of the partial sketches
        full = backend.load(folder / f"{mf.HEAD_FULL}.onnx")
        with torch.no_grad():
            want_full = ref.attn(seq).numpy()
        record(mf.HEAD_FULL, _err(full.run({"features": seq.numpy()})["embeddings"], want_full), f"T={len(seq)}")

        step = backend.load(folder / f"{mf.HEAD_STEP}.onnx")
        d = seq.shape[1]
        keys = np.zeros((0, d), np.float32)
        values = np.zeros((0, d), np.float32)
        worst = 0.0
        for t in range(len(seq)):
            out = step.run({"feature": seq[t : t + 1].numpy(), "past_keys": keys, "past_values": values})
            keys = np.concatenate([keys, out["key"]])
            values = np.concatenate([values, out["value"]])
            with torch.no_grad():
                want = ref.attn(seq[: t + 1])[-1].numpy()
            worst = max(worst, _err(out["embedding"][0], want))
        # and at the session's stroke bound, from a cache filled with realistic rows
        rng = np.random.default_rng(seed + 1)
        idx = rng.integers(0, len(seq), LONG_SEQUENCE)
        long_seq = seq[idx] + torch.from_numpy(rng.normal(0, 0.01, (LONG_SEQUENCE, d)).astype(np.float32))
        long_seq = torch.nn.functional.normalize(long_seq, dim=-1)
        with torch.no_grad():
            a = ref.attn.norm(long_seq[:-1])
            w = ref.attn.mha.in_proj_weight
            b = ref.attn.mha.in_proj_bias
            k_cache = (a @ w[d : 2 * d].T + b[d : 2 * d]).numpy()
            v_cache = (a @ w[2 * d :].T + b[2 * d :]).numpy()
            want = ref.attn(long_seq)[-1].numpy()
        out = step.run({"feature": long_seq[-1:].numpy(), "past_keys": k_cache, "past_values": v_cache})
        worst = max(worst, _err(out["embedding"][0], want))
        record(mf.HEAD_STEP, worst, f"stroke by stroke over {len(seq)} strokes from an empty cache, and at T={LONG_SEQUENCE}")
    else:
        say("parity: sketch projection")
        proj = backend.load(folder / f"{mf.SKETCH_PROJECTION}.onnx")
        with torch.no_grad():
            want = ref.sketch_linear(features).numpy()
        record(mf.SKETCH_PROJECTION, _err(proj.run({"features": features.numpy()})["embeddings"], want), f"N={len(features)}")

    failed = {k: v for k, v in report.items() if not v["passed"]}
    if failed:
        lines = ", ".join(f"{k}: max abs error {v['max_abs_err']:.2e} > {tolerance:.0e}" for k, v in failed.items())
        raise ParityError(
            f"exported graphs disagree with the PyTorch reference ({lines})",
            path=folder,
            hint="check --num-heads (it cannot be read from the weights; the authors use 8) and the checkpoint",
        )
    return report
