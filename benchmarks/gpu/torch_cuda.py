"""PyTorch peers on the GPU the engines run on: the sketch encoder + head, per stroke, like with like.

The peers a PyTorch user would pick on a GPU, each on the same strokes, canvas and preprocessing as
the runtime (only the way the model runs differs, as in :mod:`dcssa.benchmarks.torch_peers`):

* ``torch-cuda-eager``: eager fp32 under ``inference_mode``;
* ``torch-cuda-fp16`` / ``torch-cuda-bf16``: ``torch.autocast("cuda", ...)`` around encoder and head
  (bf16 only where ``torch.cuda.is_bf16_supported()``: Ampere and newer, Orin included);
* ``torch-cuda-graphs``: ``torch.compile(mode="reduce-overhead")`` (inductor + CUDA graphs) under fp16
  autocast; its first call (the compile) is reported apart as ``first_call_ms``.

Per stroke: the canvas and preprocessing on the CPU, the raster to the device, the encoder, the
head over the feature prefix, the top-10 over the gallery on the device, and the indices back on
the host (that copy synchronises, so the wall time is the real stroke).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

TOP_K = 10


def _variants(torch, fam, quick: bool) -> list[tuple[str, str, object, object]]:
    """(name, what, encoder, autocast dtype or None) of the peers this GPU runs."""
    out = [("torch-cuda-eager", "eager fp32", fam.encoder, None),
           ("torch-cuda-fp16", "autocast fp16", fam.encoder, torch.float16)]
    if torch.cuda.is_bf16_supported():
        out.append(("torch-cuda-bf16", "autocast bf16", fam.encoder, torch.bfloat16))
    if not quick:
        out.append(("torch-cuda-graphs", "torch.compile(mode='reduce-overhead'): inductor + CUDA graphs, autocast fp16",
                    torch.compile(fam.encoder, mode="reduce-overhead"), torch.float16))
    return out


def _stroke_loop(torch, fam, pipe, encoder, dtype, sketch, photos):
    """Per-stroke ms and (embedding, top-k indices) of one sketch."""
    canvas, feats, times, outs = pipe.canvas(), [], [], []
    ctx = (lambda: torch.autocast("cuda", dtype=dtype)) if dtype is not None else contextlib.nullcontext
    for stroke in sketch:
        t0 = time.perf_counter()
        canvas.add_stroke(stroke)
        x = torch.from_numpy(pipe.preprocess(canvas.image)).to("cuda", non_blocking=True)
        with torch.inference_mode(), ctx():
            feats.append(encoder(x).float().clone())
            e = fam.finish(feats).float()
            top = torch.topk(photos @ e, min(TOP_K, len(photos))).indices.cpu()
        times.append((time.perf_counter() - t0) * 1e3)
        outs.append((e.cpu(), top))
    return times, outs


def cuda_peers(bundle_path: Path, gallery_path: Path, ckpt, *, quick: bool = False, sketch_count: int = 4) -> dict:
    """Median per-stroke ms of each peer on ``cuda:0`` and its agreement with eager fp32."""
    import torch

    from dcssa.benchmarks.gpu.measure import sketches
    from dcssa.benchmarks.torch_peers import model_family
    from dcssa.runtime import Bundle, Gallery
    from dcssa.runtime.stroke.pipeline import SketchPipeline

    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (a CPU-only wheel? torch.version.cuda="
                           f"{torch.version.cuda}): install the CUDA wheel of your platform")
    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    drawn = sketches(sketch_count + 1, seed=100)
    fam = model_family(bundle, ckpt, drawn[0])
    (fam.model or fam.encoder).to("cuda")  # encoder and head
    pipe = SketchPipeline(bundle.sketch_recipe)
    photos = torch.from_numpy(np.array(gallery.embeddings, np.float32)).to("cuda")
    out: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "peers": {}}
    reference = None
    for name, what, encoder, dtype in _variants(torch, fam, quick):
        t0 = time.perf_counter()
        _stroke_loop(torch, fam, pipe, encoder, dtype, drawn[0][:2], photos)  # first calls (compile, autotune)
        first = (time.perf_counter() - t0) * 1e3
        times, outs = [], []
        for sketch in drawn[1:]:
            t, o = _stroke_loop(torch, fam, pipe, encoder, dtype, sketch, photos)
            times += t
            outs += o
        rec = {"setup": what, "median_ms": round(float(np.median(times)), 3), "first_call_ms": round(first, 1),
               "strokes": len(times)}
        if reference is None:
            reference = outs
        else:
            rec["vs_eager"] = _agreement(reference, outs)
        out["peers"][name] = rec
    out["summary"] = ", ".join(f"{n} {r['median_ms']} ms" for n, r in out["peers"].items())
    return out


def _agreement(reference: list, other: list) -> dict:
    cos = [float((a @ b) / (a.norm() * b.norm())) for (a, _), (b, _) in zip(reference, other)]
    overlap = [len(set(ka.tolist()) & set(kb.tolist())) / max(1, len(ka)) for (_, ka), (_, kb) in zip(reference, other)]
    return {"cosine_min": min(cos), "top10_overlap": float(np.mean(overlap))}
