"""One evaluation end to end: dataset -> gallery -> every backend/precision -> report folder.

The photo gallery is the expensive, shared part: it is reused from an earlier run when the same
photo encoder embedded the same photo folder, and built otherwise. Every run (backend/precision)
then ranks the same sketches against the same photos, so their numbers and top-k lists compare
one to one.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import staged_dir
from ..backends import Backend, get_backend
from ..contract import manifest as mf
from ..contract.bundle import Bundle
from ..data.arnet import ArnetSplit, load_arnet_split
from ..data.qmul import DatasetError, QmulSplit, load_split
from ..errors import DcssaError, GalleryError
from ..indexing.build import build_gallery
from ..progress import Progress
from ..search.gallery import Gallery
from ..session import Retriever
from ..stroke.parse import points_to_strokes
from . import metrics as M
from .paired import bootstrap_description, paired_bootstrap, sketch_values
from .png_run import png_run
from .protocols import SketchEvaluator, SketchOutcome
from .report import write_report

TOPK = 10
PROTOCOL_NOTES = {
    "causal": "causal: the answer after step t is the last row of the stroke head over steps 1..t, "
    "what a live user sees (with --steps strokes, literally the runtime's stroke session).",
    "paper": "paper: the authors' protocol: 20-step point slicing and the stroke head over the whole "
    "sequence (step t also attends to later steps, which a live user has not drawn). 'metrics' are the "
    "corrected values; 'published' reproduces the authors' metric code (wm@A/wm@B as running averages "
    "never reset between sketches, step weights from the first sketch's step count) for comparison "
    "with published tables.",
}

CURVE_NOTE = (
    "rank_vs_progress.png: at completion c every sketch contributes its latest step drawn with at most c of "
    "its points; early points average fewer sketches (counts in eval.json runs[].curve.sketches)."
)


@dataclass
class RunConfig:
    backend: str
    precision: str


def parse_compare(text: str, backend: str) -> list[RunConfig]:
    """``fp32,int8`` or ``ort-cpu:fp32,ort-cuda:fp16`` -> run configurations, in order."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        b, _, p = item.rpartition(":")
        out.append(RunConfig(b or backend, p))
    if not out:
        raise DcssaError(f"--compare {text!r} names no precision", hint="e.g. --compare fp32,int8")
    return out


def _eval_gallery(full: Gallery, split: QmulSplit) -> Gallery:
    """The split's photos only (deduplicated, in first-appearance order), as float32 rows."""
    names = {split.photo_id(n): n for n in split.photos}
    rows, missing = M.protocol_gallery_rows(full.ids, list(names))
    if missing:
        raise DatasetError(
            "photo could not be embedded (unreadable image)", path=split.photo_path(names[missing[0]]),
            hint="replace the file with a readable PNG",
        )
    emb = np.asarray(full.embeddings[rows], np.float32)
    meta = {**full.meta, "count": len(rows)}
    return Gallery(None, emb, [full.ids[i] for i in rows], meta)


def _usable(path: Path, bundle: Bundle, split: QmulSplit) -> tuple[Gallery | None, str]:
    """A cached gallery if it fits this bundle and photo folder, else None and why not."""
    try:
        g = Gallery.load(path, bundle)
    except GalleryError as exc:
        return None, exc.message
    if g.meta.get("photos_root") != str(split.photo_dir.resolve()):
        return None, f"it indexes {g.meta.get('photos_root')}, not {split.photo_dir.resolve()}"
    have = set(g.ids)
    lacking = [n for n in split.photos if split.photo_id(n) not in have]
    if lacking:
        return None, f"it lacks {len(lacking)} of the split's photos (e.g. {split.photo_id(lacking[0])})"
    return g, ""


def resolve_gallery(
    split: QmulSplit,
    bundle: Bundle,
    *,
    out: Path,
    staged: Path,
    gallery: Path | None,
    backend: Backend,
    progress: bool,
    warn: Callable[[str], None],
) -> tuple[Gallery, dict]:
    """Reuse ``gallery`` (default ``out/gallery``) when it fits, else build ``staged/gallery``."""
    candidate = gallery if gallery is not None else out / "gallery"
    final = out / "gallery"
    if candidate.exists():
        g, why = _usable(candidate, bundle, split)
        if g is not None:
            inside_out = candidate.resolve().is_relative_to(out.resolve())
            if inside_out:  # `out` is about to be replaced: carry the gallery over
                shutil.copytree(candidate, staged / "gallery")
                g = Gallery.load(staged / "gallery", bundle)
            return g, {"path": str(final if inside_out else candidate), "reused": True, "photos": len(g)}
        if gallery is not None:
            warn(f"not reusing {candidate}: {why}; building a new gallery in {final}")
    elif gallery is not None:
        warn(f"no gallery at {candidate}; building one in {final}")
    g = build_gallery(split.photo_dir, bundle, staged / "gallery", backend=backend, progress=progress, warn=warn)
    return g, {"path": str(final), "reused": False, "photos": len(g)}


def _label(backend: Backend, precision: str, seen: set[str]) -> str:
    label = f"{backend.name}/{precision}"
    n = 2
    while label in seen:
        label = f"{backend.name}/{precision}#{n}"
        n += 1
    seen.add(label)
    return label


def _backends(configs: list[RunConfig], bundle: Bundle, threads: int | None) -> list[Backend]:
    """One backend per configuration, checked before any work (precision present, or a mode)."""
    backends = [get_backend(c.backend, threads=threads, cache_dir=bundle.path / ".cache", precision=c.precision)
                for c in configs]
    for c, backend in zip(configs, backends):
        if c.precision not in backend.execution_precisions:  # bf16 on openvino runs the fp32 graph
            bundle.graph_entry(mf.SKETCH_ENCODER, c.precision)
    return backends


def _run_one(evaluate: SketchEvaluator, label: str, data: QmulSplit, photos: Gallery, protocol: str,
             progress: bool) -> tuple[dict, list[SketchOutcome]]:
    """Every sketch through one backend/precision: metrics, published values, curve, per-sketch ranks."""
    target = {Path(pid).stem: i for i, pid in enumerate(photos.ids)}
    t0 = time.perf_counter()
    with Progress(quiet=not progress).bar(len(data.sketches), label, "sketch", leave=True) as bar:
        res = []
        for s in data.sketches:
            res.append(evaluate(s, target[s.photo]))
            bar.update(1)
    ranks = [o.ranks for o in res]
    r = evaluate.r
    run = {"label": label, "backend": r.backend.name, "precision": r.precision, "gallery_photos": len(photos),
           "seconds": round(time.perf_counter() - t0, 2), "metrics": M.summarize(ranks, len(photos))}
    if protocol == "paper":
        values, notes = M.summarize_published(ranks, len(photos))
        run["published"] = {"metrics": values, "notes": notes}
    run["curve"] = M.progress_curve(ranks, [o.completion for o in res], len(photos))
    run["sketches"] = [o.to_dict() for o in res]
    return run, res


def _add_agreement(runs: list[dict], outcomes: list[list[SketchOutcome]], configs: list[RunConfig]) -> None:
    """Top-1 / top-k agreement of every run with the first fp32 run (None without one)."""
    ref = next((i for i, c in enumerate(configs) if c.precision == "fp32"), None)
    for run, res in zip(runs, outcomes):
        if ref is None or not res:
            run["agreement"] = None
            continue
        agree = M.agreement([o.top for o in res], [o.top for o in outcomes[ref]])
        run["agreement"] = {"reference": runs[ref]["label"], "top1_identical": agree["top1_identical"],
                            f"top{TOPK}_overlap": agree["topk_overlap"]}
        if run is not runs[ref]:  # the task change against the reference, with its bounds (as calibrate reports it)
            n = runs[ref]["gallery_photos"]
            run["task_change"] = {
                "reference": runs[ref]["label"], "method": bootstrap_description(),
                "metrics": paired_bootstrap(sketch_values([o.ranks for o in outcomes[ref]], n),
                                            sketch_values([o.ranks for o in res], n), keys=[o.key for o in res]),
            }


def _document(data: QmulSplit, photos: Gallery, b: Bundle, protocol: str, steps: str, ginfo: dict,
              runs: list[dict]) -> dict:
    return {
        "tool": "dcssa-rt eval",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"path": str(data.root), "name": data.name, "split": data.split,
                    "coordinate_file": str(data.coordinate_file), "sketches": len(data.sketches),
                    "gallery_photos": len(photos), "synthetic": _synthetic(data.root)},
        "bundle": {"path": str(b.path), "family": b.family, "phase": b.phase, "demo": b.demo, "created": b.manifest.get("created")},
        "protocol": protocol,
        "steps": steps,
        "topk": TOPK,
        "gallery": ginfo,
        "notes": [PROTOCOL_NOTES[protocol], CURVE_NOTE],
        "runs": runs,
    }


def run_evaluation(
    dataset: str | Path,
    bundle: str | Path | Bundle,
    out: str | Path,
    *,
    split: str = "test",
    protocol: str = "causal",
    steps: str | None = None,
    configs: list[RunConfig] | None = None,
    gallery: str | Path | None = None,
    threads: int | None = None,
    limit: int | None = None,
    force: bool = False,
    progress: bool = True,
    warn: Callable[[str], None] = lambda _m: None,
    layout: str = "qmul",
) -> dict:
    """Evaluate every configuration and write ``out`` (eval.json, eval.md, plot, gallery); returns eval.json.

    ``layout="arnet"``: ARNet's folders; the sketch PNGs give the authors' acc@1/5/10 and a stroke
    file beside them (``<Name>_Coordinate``) the on-the-fly curves as well.
    """
    steps = steps or ("points20" if protocol == "paper" else "strokes")
    out = Path(out)
    configs = configs or [RunConfig("auto", "fp32")]
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    if layout == "arnet":
        if b.family != mf.ARNET:
            raise DcssaError(f"--format arnet evaluates sketch PNGs, which a {b.kind} bundle does not take "
                             "(its sketches are strokes drawn by its own rasteriser)", path=b.path,
                             hint="evaluate DC-SSA on the QMUL layout (a DS_Coordinate stroke file), or pass an ARNet bundle")
        data = load_arnet_split(dataset, split, limit=limit)
        for rule, n in data.rules.items():
            if n:
                warn(f"pairing: {n} sketch(es) matched the rule {rule}")
        if data.unmatched:
            warn(f"{len(data.unmatched)} PNG(s) in {split}A name no photo of {split}B (e.g. {data.unmatched[0]}): skipped")
    else:
        data = load_split(dataset, split, limit=limit)
    backends = _backends(configs, b, threads)  # fail before any work
    longest = max((len(points_to_strokes(s.points)) for s in data.sketches), default=1)
    with staged_dir(out, force=force) as tmp:
        full, ginfo = resolve_gallery(
            data, b, out=out, staged=tmp, gallery=None if gallery is None else Path(gallery),
            backend=backends[0], progress=progress, warn=warn,
        )
        photos = _eval_gallery(full, data)
        runs, outcomes, seen = [], [], set()
        for cfg, backend in zip(configs, backends):
            r = Retriever(b, photos, backend=backend, precision=cfg.precision, topk=TOPK,
                          max_strokes=max(b.max_strokes, longest))
            label = _label(backend, cfg.precision, seen)
            if data.sketches:
                run, res = _run_one(SketchEvaluator(r, protocol, steps), label, data, photos, protocol, progress)
            else:
                run, res = {"label": label, "backend": backend.name, "precision": cfg.precision}, []
            if isinstance(data, ArnetSplit):
                run["png"] = png_run(data, r, photos)
            runs.append(run)
            outcomes.append(res)
        _add_agreement(runs, outcomes, configs)
        doc = _document(data, photos, b, protocol, steps, ginfo, runs)
        if isinstance(data, ArnetSplit):
            doc["dataset"].update({"layout": "arnet", "png_sketches": len(data.pngs), "pairing": data.rules,
                                   "unmatched_pngs": len(data.unmatched)})
        doc["files"] = write_report(tmp, doc, warn=warn)
    return doc


def _synthetic(root: Path) -> bool:
    readme = root / "README.txt"
    try:
        return readme.is_file() and "SYNTHETIC" in readme.read_text(errors="replace")
    except OSError:
        return False
