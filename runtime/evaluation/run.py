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
from ..progress import SILENT, Reporter
from ..search.gallery import Gallery
from ..session import Retriever
from ..stroke.parse import points_to_strokes
from . import EvalOptions, RunConfig
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


def parse_compare(text: str, backend: str) -> tuple[RunConfig, ...]:
    """``fp32,int8`` or ``ort-cpu:fp32,ort-cuda:fp16`` -> run configurations, in order (``backend``: the
    one of an item without one)."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        b, _, p = item.rpartition(":")
        out.append(RunConfig(b or backend, p))
    if not out:
        raise DcssaError(f"--compare {text!r} names no precision", hint="e.g. --compare fp32,int8")
    return tuple(out)


def eval_gallery(full: Gallery, split: QmulSplit) -> Gallery:
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


def resolve_gallery(split: QmulSplit, bundle: Bundle, *, out: Path, staged: Path, gallery: Path | None,
                    backend: Backend, report: Reporter = SILENT) -> tuple[Gallery, dict]:
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
            report.warn(f"not reusing {candidate}: {why}; building a new gallery in {final}")
    elif gallery is not None:
        report.warn(f"no gallery at {candidate}; building one in {final}")
    g = build_gallery(split.photo_dir, bundle, staged / "gallery", backend=backend, report=report)
    return g, {"path": str(final), "reused": False, "photos": len(g)}


def _label(backend: Backend, precision: str, seen: set[str]) -> str:
    label = f"{backend.name}/{precision}"
    n = 2
    while label in seen:
        label = f"{backend.name}/{precision}#{n}"
        n += 1
    seen.add(label)
    return label


def _backends(configs: tuple[RunConfig, ...], bundle: Bundle, threads: int | None) -> list[Backend]:
    """One backend per configuration, checked before any work (precision present, or a mode)."""
    backends = [get_backend(c.backend, threads=threads, cache_dir=bundle.path / ".cache", precision=c.precision)
                for c in configs]
    for c, backend in zip(configs, backends):
        if c.precision not in backend.execution_precisions:  # bf16 on openvino runs the fp32 graph
            bundle.graph_entry(mf.SKETCH_ENCODER, c.precision)
    return backends


def _run_one(evaluate: SketchEvaluator, label: str, data: QmulSplit, photos: Gallery, protocol: str,
             report: Reporter) -> tuple[dict, list[SketchOutcome]]:
    """Every sketch through one backend/precision: metrics, published values, curve, per-sketch ranks."""
    target = {Path(pid).stem: i for i, pid in enumerate(photos.ids)}
    t0 = time.perf_counter()
    with report.bar(len(data.sketches), label, "sketch", leave=True) as bar:
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


def _add_agreement(runs: list[dict], outcomes: list[list[SketchOutcome]], configs: tuple[RunConfig, ...]) -> None:
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


def _document(data: QmulSplit, photos: Gallery, b: Bundle, options: EvalOptions, ginfo: dict, runs: list[dict]) -> dict:
    doc = {
        "tool": "dcssa-rt eval",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"path": str(data.root), "name": data.name, "split": data.split,
                    "coordinate_file": str(data.coordinate_file), "sketches": len(data.sketches),
                    "gallery_photos": len(photos), "synthetic": _synthetic(data.root)},
        "bundle": {"path": str(b.path), "family": b.family, "phase": b.phase, "demo": b.demo, "created": b.manifest.get("created")},
        "protocol": options.protocol,
        "steps": options.step_kind,
        "topk": TOPK,
        "gallery": ginfo,
        "notes": [PROTOCOL_NOTES[options.protocol], CURVE_NOTE],
        "runs": runs,
    }
    if isinstance(data, ArnetSplit):
        doc["dataset"].update({"layout": "arnet", "png_sketches": len(data.pngs), "pairing": data.rules,
                               "unmatched_pngs": len(data.unmatched)})
    return doc


def _load_data(dataset: str | Path, b: Bundle, options: EvalOptions, report: Reporter) -> QmulSplit:
    """The split's sketches and photos: the QMUL layout, or ARNet's folders (an ARNet bundle only)."""
    if options.layout != "arnet":
        return load_split(dataset, options.split, limit=options.limit)
    if b.family != mf.ARNET:
        raise DcssaError(f"--format arnet evaluates sketch PNGs, which a {b.kind} bundle does not take "
                         "(its sketches are strokes drawn by its own rasteriser)", path=b.path,
                         hint="evaluate DC-SSA on the QMUL layout (a DS_Coordinate stroke file), or pass an ARNet bundle")
    data = load_arnet_split(dataset, options.split, limit=options.limit)
    for rule, n in data.rules.items():
        if n:
            report.warn(f"pairing: {n} sketch(es) matched the rule {rule}")
    if data.unmatched:
        report.warn(f"{len(data.unmatched)} PNG(s) in {options.split}A name no photo of {options.split}B "
                    f"(e.g. {data.unmatched[0]}): skipped")
    return data


def _run_all(data: QmulSplit, photos: Gallery, b: Bundle, options: EvalOptions, backends: list[Backend],
             report: Reporter) -> tuple[list[dict], list[list[SketchOutcome]]]:
    """Every configuration over the same sketches and photos: its run record and per-sketch outcomes."""
    longest = max((len(points_to_strokes(s.points)) for s in data.sketches), default=1)
    runs, outcomes, seen = [], [], set()
    for cfg, backend in zip(options.configs, backends):
        r = Retriever(b, photos, backend=backend, precision=cfg.precision, topk=TOPK,
                      max_strokes=max(b.max_strokes, longest))
        label = _label(backend, cfg.precision, seen)
        if data.sketches:
            evaluate = SketchEvaluator(r, options.protocol, options.step_kind)
            run, res = _run_one(evaluate, label, data, photos, options.protocol, report)
        else:
            run, res = {"label": label, "backend": backend.name, "precision": cfg.precision}, []
        if isinstance(data, ArnetSplit):
            run["png"] = png_run(data, r, photos)
        runs.append(run)
        outcomes.append(res)
    return runs, outcomes


def run_evaluation(dataset: str | Path, bundle: str | Path | Bundle, out: str | Path,
                   options: EvalOptions | None = None, *, report: Reporter = SILENT) -> dict:
    """Evaluate every configuration and write ``out`` (eval.json, eval.md, plot, gallery); returns eval.json.

    ``options.layout="arnet"``: ARNet's folders; the sketch PNGs give the authors' acc@1/5/10 and a
    stroke file beside them (``<Name>_Coordinate``) the on-the-fly curves as well.
    """
    options = options or EvalOptions()
    out = Path(out)
    b = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
    data = _load_data(dataset, b, options, report)
    backends = _backends(options.configs, b, options.threads)  # fail before any work
    with staged_dir(out, force=options.force) as tmp:
        gallery = None if options.gallery is None else Path(options.gallery)
        full, ginfo = resolve_gallery(data, b, out=out, staged=tmp, gallery=gallery, backend=backends[0], report=report)
        photos = eval_gallery(full, data)
        runs, outcomes = _run_all(data, photos, b, options, backends, report)
        _add_agreement(runs, outcomes, options.configs)
        doc = _document(data, photos, b, options, ginfo, runs)
        doc["files"] = write_report(tmp, doc, report=report)
    return doc


def _synthetic(root: Path) -> bool:
    readme = root / "README.txt"
    try:
        return readme.is_file() and "SYNTHETIC" in readme.read_text(errors="replace")
    except OSError:
        return False
