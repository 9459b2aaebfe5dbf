"""What the measuring stages do: parity with onnxruntime CPU fp32, per-stroke latency, threads, rebuilds.

Every function takes the backend as a name or a :class:`~dcssa.runtime.backends.base.Backend`
object, so the tests run them on CPU stand-ins and the GPU box on the real thing.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from dcssa.runtime import Bundle, Gallery, Retriever
from dcssa.runtime.contract import manifest as mf

STROKES = 16
SKETCHES = 4


def sketches(count: int = SKETCHES, strokes: int = STROKES, seed: int = 0) -> list[list[np.ndarray]]:
    """Structured synthetic sketches (shapes traced stroke by stroke): every prefix is a query."""
    from dcssa.runtime.data.synthetic import random_sketch

    return [random_sketch(np.random.default_rng(seed + i), strokes) for i in range(count)]


def draw(retriever: Retriever, sketch: list[np.ndarray]) -> list:
    session = retriever.session()
    return [session.add_stroke(s) for s in sketch]


def compare(got: list, ref: list) -> dict:
    """Per-stroke agreement of two runs of the same strokes (lists of QueryResult)."""
    cos = [float(np.dot(a.embedding, b.embedding)) for a, b in zip(got, ref)]
    return {
        "queries": len(cos),
        "cosine_min": min(cos), "cosine_mean": float(np.mean(cos)),
        "top1_agreement": float(np.mean([a.ids[0] == b.ids[0] for a, b in zip(got, ref)])),
        "top10_overlap": float(np.mean([len(set(a.ids) & set(b.ids)) / max(1, len(b.ids)) for a, b in zip(got, ref)])),
    }


def parity(bundle_path: Path, gallery_path: Path, backend, precision: str, *, count: int = SKETCHES) -> dict:
    """``backend`` at ``precision`` against onnxruntime CPU fp32 on every stroke prefix of ``count`` sketches."""
    bundle = Bundle.load(bundle_path)
    gallery = Gallery.load(gallery_path, bundle)
    ref_r = Retriever(bundle, gallery, backend="ort-cpu", precision="fp32")
    got_r = Retriever(bundle, gallery, backend=backend, precision=precision)
    got, ref = [], []
    for sketch in sketches(count):
        ref += draw(ref_r, sketch)
        got += draw(got_r, sketch)
    out = compare(got, ref)
    out["summary"] = (f"{precision}: cosine min {out['cosine_min']:.5f}, top-10 overlap {out['top10_overlap']:.1%}, "
                      f"top-1 {out['top1_agreement']:.1%} over {out['queries']} stroke prefixes")
    return out


def latency(bundle_path: Path, gallery_path: Path, backend, precision: str, *, count: int = SKETCHES) -> dict:
    """Per-stroke wall time of the project's pipeline (canvas, encoder, head, search), per phase, after
    one warm-up sketch. Medians over ``count`` sketches' strokes."""
    bundle = Bundle.load(bundle_path)
    retriever = Retriever(bundle, Gallery.load(gallery_path, bundle), backend=backend, precision=precision)
    all_sketches = sketches(count + 1, seed=100)
    draw(retriever, all_sketches[0])  # warm-up: first-call allocations, lazy initialisation
    timings: dict[str, list[float]] = {}
    for sketch in all_sketches[1:]:
        for r in draw(retriever, sketch):
            for k, v in r.timings.items():
                timings.setdefault(k, []).append(float(v))
    med = {k: round(float(np.median(v)), 3) for k, v in timings.items()}
    return {"median_ms": med, "strokes": len(timings.get("total", [])),
            "backend": retriever.describe(), "load": _load(),
            "summary": f"{precision}: {med.get('total', float('nan')):.2f} ms per stroke (median)"}


def _load() -> list[float]:
    import os

    return [round(x, 2) for x in os.getloadavg()]


def encoder_times(bundle_path: Path, backend, precisions: tuple[str, ...], runs: int = 50) -> dict:
    """Median sketch-encoder call of each precision, side by side; the faster one is what a benchmark picks."""
    bundle = Bundle.load(bundle_path)
    x = np.zeros((1, 3, 299, 299), np.float32)
    out: dict = {}
    for precision in precisions:
        enc = Retriever(bundle, None, backend=backend, precision=precision).encoder
        for _ in range(5):
            enc.run({mf.IMAGES: x})
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            enc.run({mf.IMAGES: x})
            times.append((time.perf_counter() - t0) * 1e3)
        out[precision] = {"median_ms": round(float(np.median(times)), 3), "runs": runs}
    out["pick"] = min(precisions, key=lambda p: out[p]["median_ms"])
    out["summary"] = ", ".join(f"{p} {out[p]['median_ms']} ms" for p in precisions) + f": {out['pick']} wins"
    return out


def two_threads(bundle_path: Path, gallery_path: Path, backend, precision: str) -> dict:
    """Two sessions on two threads sharing one retriever, against the same sketches drawn one after another."""
    bundle = Bundle.load(bundle_path)
    retriever = Retriever(bundle, Gallery.load(gallery_path, bundle), backend=backend, precision=precision)
    pair = sketches(2, 12, seed=7)
    alone = [draw(retriever, s) for s in pair]
    together: dict[int, list] = {}
    errors: list[str] = []

    def user(i: int) -> None:
        try:
            together[i] = draw(retriever, pair[i])
        except Exception as exc:  # noqa: BLE001 - reported
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(pair))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    diff = max((float(np.max(np.abs(a.embedding - b.embedding)))
                for i in together for a, b in zip(together[i], alone[i])), default=None)
    return {"threads": len(pair), "errors": errors, "max_abs_diff_vs_one_thread": diff,
            "summary": f"max |diff| {diff} vs one thread, {len(errors)} errors"}


def ort_trt_growth(bundle_path: Path, gallery_path: Path, backend, cache: Path) -> dict:
    """ort-trt over a K/V cache growing stroke by stroke: engine files and slow head steps (rebuilds)."""
    bundle = Bundle.load(bundle_path)
    retriever = Retriever(bundle, Gallery.load(gallery_path, bundle), backend=backend, precision="fp32")
    before = sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else []
    heads = [r.timings.get("head", 0.0) for r in draw(retriever, sketches(1, 24, seed=3)[0])]
    after = sorted(p.name for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else []
    med = float(np.median(heads))
    slow = [i + 1 for i, h in enumerate(heads) if i and h > 10 * med]
    return {"strokes": len(heads), "head_ms": heads, "head_ms_median": med, "slow_head_steps": slow,
            "cache_files_before": before, "cache_files_after": after,
            "summary": f"{len(slow)} slow head steps (> 10x median: likely engine rebuilds), "
                       f"{len(after)} cache files"}
