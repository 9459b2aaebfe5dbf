"""``dcssa-rt info``: what a bundle holds, its gallery and index, its confidence calibrator, the backends here."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import DcssaError
from ..search.confidence import calibrator_path, load_calibrator
from ..search.gallery import Gallery
from .console import fail_cleanly
from .index import index_summary
from .options import bundle_option, default_gallery, gallery_option, output_options


def confidence_status(bundle, gallery_path: str | Path) -> dict:
    """For ``dcssa-rt info``: whether the gallery holds a calibrator, and whether it fits the bundle."""
    path = calibrator_path(gallery_path)
    if not path.is_file():
        return {"fitted": False, "path": str(path),
                "note": "no calibrator: results carry no confidence (fit one with `dcssa-rt calibrate-confidence`)"}
    try:
        cal = load_calibrator(bundle, Gallery.load(gallery_path, bundle))
    except DcssaError as exc:
        return {"fitted": False, "path": str(path), "error": exc.message, "hint": exc.hint}
    return {"fitted": True, **cal.summary()}


def _print_info(doc: dict) -> None:
    kind = doc["family"] if doc["phase"] is None else f"{doc['family']} phase {doc['phase']}"
    click.echo(f"bundle {doc['path']}  {kind}  demo {doc['demo']}  created {doc['created']}")
    click.echo(f"dims {doc['dims']}")
    for name, precisions in doc["graphs"].items():
        click.echo(f"  {name:18s} {', '.join(precisions)}")
    for name, rep in doc["parity"].items():
        click.echo(f"  parity {name:18s} max abs err {rep['max_abs_err']:.2e}")
    for prec, rep in doc["fidelity"].items():
        lat = f", encoder {rep['latency']['ratio']:.2f}x fp32" if rep.get("latency") else ""
        task = rep.get("task") or {}
        drops = "".join(f"  {m} drop <= {task[m]['drop_upper']:+.3f}" for m in ("m@B", "acc@10") if m in task)
        click.echo(f"  fidelity {prec:16s} top-1 {rep['top1_agreement']:.1%}  top-10 {rep['top10_overlap']:.1%}  "
                   f"cosine {rep['embedding_cosine']['mean']:.4f}{drops}{lat}")
    if doc.get("bf16_plan") is not None:
        click.echo(f"  bf16 plan (openvino): f32 {', '.join(doc['bf16_plan']) or 'nothing'}")
    click.echo(f"backends available: {', '.join(doc['backends_available'])}")
    g = doc.get("gallery")
    if g:
        click.echo(f"gallery {g['path']}: {g['count']} photos, dim {g['dim']}, {g['dtype']}")
        click.echo(f"  {index_summary(g['index'])}" if g.get("index") else "  search exact (numpy)")
    c = doc["confidence"]
    if c["fitted"]:
        f = c["fitted_on"]
        click.echo(f"confidence: fitted {c['created']} on {f.get('sketches')} sketches ({f.get('strokes')} strokes) "
                   f"of {f.get('dataset')} [{c['path']}]")
    elif "error" in c:
        click.echo(f"confidence: UNUSABLE {c['path']}: {c['error']}\n  fix: {c['hint']}")
    else:
        click.echo(f"confidence: none ({c['note']})")


@click.command()
@bundle_option()
@gallery_option
@output_options(json="the bundle description", quiet=False)
def info(bundle: Path, gallery: Path, as_json: bool) -> None:
    """Describe a bundle, its gallery (size, index, measured recall, confidence calibrator) and the backends here."""
    from ..backends import available_backends
    from ..contract.bundle import Bundle
    from ..errors import GalleryError
    from ..search.gallery import GALLERY_META

    with fail_cleanly():
        b = Bundle.load(bundle)
        doc = {**b.describe(), "parity": b.manifest.get("parity", {}), "backends_available": available_backends()}
        doc["fidelity"] = b.manifest.get("fidelity", {})  # reduced precisions vs fp32 (dcssa-export calibrate)
        from ..contract import manifest as mf

        if "bf16" in b.manifest.get("calibration", {}):  # a searched plan: the blocks OpenVINO's bf16 keeps in f32
            doc["bf16_plan"] = list(b.graph_spec(mf.SKETCH_ENCODER, "fp32").f32_scopes)
        where = gallery  # BUNDLE/gallery may be absent; a gallery the user names must not be
        if (where / GALLERY_META).is_file():
            try:
                meta = json.loads((where / GALLERY_META).read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GalleryError(f"corrupted gallery metadata ({exc})", path=where,
                                   hint="rebuild it with `dcssa-rt index PHOTOS --force`") from None
            doc["gallery"] = {"path": str(where), **{k: meta.get(k) for k in ("count", "dim", "dtype", "created")},
                              "index": meta.get("index")}
        elif where != default_gallery(bundle):
            raise GalleryError("not a gallery (gallery.json is missing)", path=where,
                               hint="build one with `dcssa-rt index PHOTOS --out GALLERY`")
        doc["confidence"] = confidence_status(b, where)  # per-stroke confidence: fitted or not (and why)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_info(doc)
