"""Retrieval fidelity of a reduced-precision graph against fp32, on held-out stroke prefixes.

What matters is whether the photos a user sees change, so besides the embedding cosine to fp32 the
report ranks a real gallery with both pipelines and counts top-1 agreement and top-10 overlap.
Embeddings go through the bundle's own stroke head (causal step graph, prefix by prefix, as a live
session does), so encoder errors are judged where they end up. Latency is measured interleaved
(fp32 pass, reduced pass, fp32 pass, ...) on single rasters, so a machine shared with other work
slows both sides alike; the ratio is the number to read, the milliseconds are context.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcssa.calibration import task as T
from dcssa.calibration.calibset import PrefixSet, Sketch, bundle_prefix_set
from dcssa.calibration.options import CalibrationOptions
from dcssa.runtime.backends import Backend, Runner, get_backend
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.contract.bundle import Bundle
from dcssa.runtime.data.photos import list_images, read_images
from dcssa.runtime.errors import DcssaError
from dcssa.runtime.evaluation import metrics as M
from dcssa.runtime.indexing.embed import embed_photos
from dcssa.runtime.search.gallery import Gallery
from dcssa.runtime.stroke.head import CausalHead

TOPK = 10
#: agreement targets (``--objective agreement``) and the latency ratio the int8 search hopes for
TARGETS = {**T.AGREEMENT_TARGETS, "latency_ratio": 0.50}


@dataclass
class GalleryMatrix:
    """Unit-norm photo embeddings (fp32 photo encoder) and their ids (file stems)."""

    embeddings: np.ndarray
    ids: list[str]
    source: str
    rule: str = "every photo of the source"

    def topk(self, queries: np.ndarray, k: int = TOPK) -> np.ndarray:
        """(n, k) indices, best first; ties go to the lower index, as Gallery.search does."""
        scores = queries.astype(np.float32) @ self.embeddings.T.astype(np.float32)
        k = min(k, scores.shape[1])
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def gallery_matrix(bundle: Bundle, *, photos: Path | None = None, gallery: Path | None = None,
                   backend: Backend | None = None) -> GalleryMatrix:
    """Photos embedded now with the fp32 photo encoder, or an existing gallery folder."""
    if gallery is not None:
        g = Gallery.load(gallery, bundle)
        return GalleryMatrix(np.asarray(g.embeddings, np.float32), [Path(i).stem for i in g.ids], str(gallery))
    if photos is None:
        default = bundle.path / "gallery"
        if (default / "gallery.json").is_file():
            return gallery_matrix(bundle, gallery=default)
        raise DcssaError(
            "no gallery to rank against for the fidelity report",
            path=bundle.path,
            hint="pass --photos FOLDER (catalogue images) or --gallery GALLERY, or sketch data (--data, or --calib "
                 "of the one-shot export) with a photo/ folder",
        )
    paths = list_images(Path(photos))
    if len(paths) < 2:
        raise DcssaError("the fidelity gallery needs at least 2 photos", path=photos)
    images = read_images(paths, strict=True)  # an unreadable photo is a GalleryError naming it
    emb = embed_photos(bundle, images, backend or get_backend("ort-cpu"))
    return GalleryMatrix(np.stack([emb[i] for i in range(len(paths))]).astype(np.float32),
                         [p.stem for p in paths], str(photos))


PROTOCOL_RULE = "the photos the held-out (test) sketches depict, as `dcssa-rt eval` ranks them"


def protocol_gallery(gallery: GalleryMatrix, sketches: Sequence[Sketch]) -> GalleryMatrix:
    """The gallery `dcssa-rt eval` would rank these held-out sketches against, when it is defined.

    On data with a train/test split the held-out sketches are the test split, and eval ranks them
    against the photos they depict only; ranking them against the whole photo folder instead adds
    near-ties that flip top-1 between fp32 and int8 (90.8% vs 94.1% on the demo, issue 19). Data
    without that split (strokes folders, synthetic sketches) keeps the whole gallery.
    """
    if not sketches or any(s.split != "test" or s.target is None for s in sketches):
        return gallery
    rows, missing = M.protocol_gallery_rows(gallery.ids, [s.target for s in sketches])
    if missing or len(rows) < 2:
        return gallery
    return GalleryMatrix(gallery.embeddings[rows], [gallery.ids[r] for r in rows], gallery.source, PROTOCOL_RULE)


def encode(runner: Runner, prefixes: PrefixSet, batch_size: int = 8,
           on_batch: Callable[[int], None] = lambda _n: None) -> np.ndarray:
    """Step features (N, D) of every prefix."""
    out = []
    for i in range(0, len(prefixes), batch_size):
        x = prefixes.images(i, i + batch_size)
        out.append(runner.run({mf.IMAGES: x})[mf.encoder_output(runner.spec)])
        on_batch(len(x))
    return np.concatenate(out).astype(np.float32)


def embed(bundle: Bundle, head: Runner | None, features: np.ndarray, prefixes: PrefixSet) -> np.ndarray:
    """Embeddings (N, E): the head run causally over each sketch's prefixes in order, as a session does."""
    out = np.zeros((len(features), bundle.embed_dim), np.float32)
    for idx in prefixes.sequences():
        if len(idx):
            out[idx] = CausalHead.embed_sequence(head, features[idx])
    return out


def load_head(bundle: Bundle, backend: Backend, precision: str = "fp32") -> Runner | None:
    """The stroke head (phase 2) or projection (phase 1) at ``precision``, else fp32 as the runtime does.

    None for a family without one (ARNet): the encoder's outputs are the embeddings.
    """
    name = bundle.head_graph
    if name is None:
        return None
    p = precision if precision in bundle.precisions(name) else "fp32"
    return backend.load(bundle.graph_path(name, p), spec=bundle.graph_spec(name, p))


def load_encoder(bundle: Bundle, backend: Backend, path: Path | None = None) -> Runner:
    """The bundle's fp32 sketch encoder, or a candidate file of the same signature."""
    return backend.load(path or bundle.graph_path(mf.SKETCH_ENCODER, "fp32"), spec=bundle.graph_spec(mf.SKETCH_ENCODER))


@dataclass
class Reference:
    """The fp32 pipeline on the held-out set, computed once and compared with every candidate.

    ``targets``/``task``: the held-out sketches whose photo is in the gallery and fp32's per-sketch
    task metrics on them (None without ground truth: then agreement is the only yardstick).
    """

    features: np.ndarray
    embeddings: np.ndarray
    top: np.ndarray
    targets: T.SketchTargets | None = None
    task: dict[str, np.ndarray] | None = None


def reference(bundle: Bundle, prefixes: PrefixSet, gallery: GalleryMatrix, backend: Backend | None = None,
              on_batch: Callable[[int], None] = lambda _n: None) -> Reference:
    backend = backend or get_backend("ort-cpu")
    f = encode(load_encoder(bundle, backend), prefixes, on_batch=on_batch)
    e = embed(bundle, load_head(bundle, backend), f, prefixes)
    targets = T.sketch_targets(prefixes, gallery.ids)
    task = None if targets is None else T.per_sketch(e, prefixes, gallery.embeddings, targets)
    return Reference(f, e, gallery.topk(e), targets, task)


def noise_floor(bundle: Bundle, prefixes: PrefixSet, gallery: GalleryMatrix, ref: Reference,
                backend: Backend | None = None, kinds: Sequence[str] = T.PERTURBATIONS,
                on_batch: Callable[[int], None] = lambda _n: None) -> dict:
    """fp32 against itself on the same sketches moved by one pixel / jittered again: the task drop
    and the agreement a user's hand causes, to set beside every plan's."""
    backend = backend or get_backend("ort-cpu")
    enc, head = load_encoder(bundle, backend), load_head(bundle, backend)
    out = {}
    for kind in kinds:
        moved = bundle_prefix_set(bundle, T.perturb(prefixes.sketches, kind))
        if len(moved) != len(prefixes) or not np.array_equal(moved.sketch, prefixes.sketch):
            continue  # a stroke vanished at the frame's edge: not the same prefixes any more
        e = embed(bundle, head, encode(enc, moved, on_batch=on_batch), moved)
        agree = M.agreement([gallery.topk(e)], [ref.top])
        rec = {"top1_agreement": agree["top1_identical"], "top10_overlap": agree["topk_overlap"],
               "embedding_cosine": {"mean": float(_cos(e, ref.embeddings).mean())}}
        if ref.task is not None:
            rec["task"] = T.compare_task(ref.task, T.per_sketch(e, moved, gallery.embeddings, ref.targets),
                                         keys=T.sketch_keys(prefixes, ref.targets))
        out[kind] = rec
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def compare(ref: Reference, features: np.ndarray, embeddings: np.ndarray, gallery: GalleryMatrix) -> dict:
    """Cosines and ranking agreement of a candidate's outputs with the fp32 reference."""
    top = gallery.topk(embeddings)
    agree = M.agreement([top], [ref.top])  # the function `dcssa-rt eval --compare` reports
    fc, ec = _cos(features, ref.features), _cos(embeddings, ref.embeddings)
    return {
        "feature_cosine": {"mean": float(fc.mean()), "min": float(fc.min())},
        "embedding_cosine": {"mean": float(ec.mean()), "min": float(ec.min())},
        "top1_agreement": agree["top1_identical"],
        "top10_overlap": agree["topk_overlap"],  # over min(10, gallery size) photos, see "topk"
        "topk": top.shape[1],
    }


def target_accuracy(values: dict[str, np.ndarray]) -> dict:
    """acc@1 / acc@10 at the last stroke of each held-out sketch whose target photo is in the gallery."""
    return {"sketches": len(values["acc@1"]), "acc@1": float(np.mean(values["acc@1"])),
            "acc@10": float(np.mean(values["acc@10"]))}


def interleaved_latency(a: Runner, b: Runner, images: np.ndarray, repeats: int = 3, warmup: int = 2) -> dict:
    """Median single-raster latency of ``a`` and ``b`` in alternating blocks; ratio = b / a.

    Blocks, not alternate runs: a runtime's idle thread pool keeps spinning for a while after a run,
    so a run right after the other graph's is slowed by it (measured on onnxruntime: fp32 124 ms and
    int8 95 ms run by run, against 82 ms and 50 ms in a session). Each block starts with an untimed
    run that absorbs that hand-over.
    """
    x0 = images[:1]
    for _ in range(warmup):
        a.run({mf.IMAGES: x0})
        b.run({mf.IMAGES: x0})
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(repeats):
        for which, runner in ((0, a), (1, b)):
            runner.run({mf.IMAGES: x0})
            for i in range(len(images)):
                t0 = time.perf_counter()
                runner.run({mf.IMAGES: images[i : i + 1]})
                times[which].append(time.perf_counter() - t0)
    ta, tb = times[0], times[1]
    ma, mb = float(np.median(ta)) * 1e3, float(np.median(tb)) * 1e3
    ratios = np.asarray(tb) / np.asarray(ta)
    return {"fp32_ms": ma, "reduced_ms": mb, "ratio": mb / ma, "ratio_of_pairs_median": float(np.median(ratios)),
            "runs": len(ta), "scheme": "alternating blocks, one untimed run at each block's start"}


def fidelity_report(
    bundle: Bundle,
    candidate: Path,
    precision: str,
    prefixes: PrefixSet,
    gallery: GalleryMatrix,
    ref: Reference,
    *,
    backend: Backend | None = None,
    latency_rasters: int = CalibrationOptions.latency_rasters,
    latency_repeats: int = 3,
    on_batch: Callable[[int], None] = lambda _n: None,
    encoder: Runner | None = None,
    baseline: Runner | None = None,
    objective: T.Objective | None = None,
) -> dict:
    """The full report for one reduced-precision sketch encoder file (not yet in the bundle).

    ``encoder``: the candidate already loaded (an execution mode such as OpenVINO bf16 over the fp32
    file); ``baseline``: the fp32 runner its latency is compared with [default: ``backend``'s fp32].
    The stroke head always runs on ``backend``.
    """
    backend = backend or get_backend("ort-cpu")
    objective = objective or T.Objective()
    enc = encoder or load_encoder(bundle, backend, candidate)
    f = encode(enc, prefixes, on_batch=on_batch)
    e = embed(bundle, load_head(bundle, backend, precision), f, prefixes)
    report = compare(ref, f, e, gallery)
    last = [idx[-1] for idx in prefixes.sequences() if len(idx)]
    finished = M.agreement([gallery.topk(e[last])], [ref.top[last]])
    report["finished_sketches"] = {  # the same two numbers on complete sketches only
        "top1_agreement": finished["top1_identical"], "top10_overlap": finished["topk_overlap"],
    }
    if ref.task is not None:
        mine = T.per_sketch(e, prefixes, gallery.embeddings, ref.targets)
        report["task"] = T.compare_task(ref.task, mine, keys=T.sketch_keys(prefixes, ref.targets))
        report["target_accuracy"] = {"fp32": target_accuracy(ref.task), precision: target_accuracy(mine)}
    if latency_rasters:
        fp32 = baseline or load_encoder(bundle, backend)
        pick = np.unique(np.linspace(0, len(prefixes) - 1, latency_rasters).round().astype(int))
        imgs = np.concatenate([prefixes.images(i, i + 1) for i in pick])
        lat = interleaved_latency(fp32, enc, imgs, repeats=latency_repeats)
        owner = getattr(enc, "backend", backend)
        lat.update(backend=getattr(owner, "name", backend.name), threads=getattr(owner, "threads", None),
                   machine=_machine())
        report["latency"] = lat
    report["held_out"] = {"sketches": len(prefixes.sketches), "prefixes": len(prefixes)}
    report["gallery"] = {"photos": len(gallery.ids), "source": gallery.source, "rule": gallery.rule}
    report["objective"] = objective.record()
    report["objective_used"] = objective.effective(report)
    report["meets_objective"] = objective.faithful(report)
    return report


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                import os

                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary_line(precision: str, report: dict) -> str:
    """One line for the CLI."""
    k = report.get("topk", TOPK)
    text = (f"{precision}: cosine to fp32 mean {report['embedding_cosine']['mean']:.4f} "
            f"min {report['embedding_cosine']['min']:.4f}, top-1 agreement {report['top1_agreement']:.1%}, "
            f"top-{k} overlap {report['top10_overlap']:.1%}")
    task = report.get("task")
    if task:
        text += ", " + ", ".join(f"{m} {task[m]['candidate']:.3f} (fp32 {task[m]['reference']:.3f}, drop <= "
                                 f"{task[m]['drop_upper']:+.3f})" for m in ("m@B", "acc@10") if m in task)
    if "latency" in report:
        lat = report["latency"]
        text += f", encoder {lat['reduced_ms']:.1f} ms vs fp32 {lat['fp32_ms']:.1f} ms ({lat['ratio']:.2f}x)"
    return text


def noise_line(kind: str, rec: dict) -> str:
    """One line of the noise floor for the CLI."""
    text = f"noise floor, fp32 with strokes {kind}: top-1 agreement {rec['top1_agreement']:.1%}, " \
           f"top-10 overlap {rec['top10_overlap']:.1%}"
    task = rec.get("task")
    if task:
        text += ", " + ", ".join(f"{m} drop {task[m]['drop']:+.3f} (<= {task[m]['drop_upper']:+.3f})"
                                 for m in ("m@B", "acc@10") if m in task)
    return text
