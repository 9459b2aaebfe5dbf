"""``dcssa-rt``: query, index and inspect bundles from the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from .cli_util import DEMO_WARNING, fail_cleanly

_BACKEND_HELP = "Backend: auto, ort-cpu, ort-cuda, ort-trt, tensorrt, openvino (auto picks the fastest available)."


def _bundle_option(f):
    return click.option(
        "--bundle",
        type=click.Path(path_type=Path),
        envvar="DCSSA_BUNDLE",
        default=Path("dcssa-bundle"),
        show_default=True,
        help="Bundle folder (or $DCSSA_BUNDLE).",
    )(f)


def _gallery_path(bundle: Path, gallery: Path | None) -> Path:
    return gallery if gallery is not None else bundle / "gallery"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcssa-rt")
def main() -> None:
    """Serve exported DC-SSA bundles: per-stroke sketch retrieval over a photo catalogue."""


@main.command()
@click.argument("strokes", type=click.Path(path_type=Path))
@_bundle_option
@click.option("--gallery", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--topk", type=click.IntRange(1), default=10, show_default=True)
@click.option("--backend", default="auto", show_default=True, help=_BACKEND_HELP)
@click.option("--precision", default="fp32", show_default=True,
              help="Graph precision present in the bundle, or bf16 (an openvino execution mode).")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: all cores).")
@click.option("--target", default=None, help="A gallery id to follow: prints its rank after every stroke.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per stroke on stdout.")
def query(strokes: Path, bundle: Path, gallery: Path | None, topk: int, backend: str, precision: str,
          threads: int | None, target: str | None, as_json: bool) -> None:
    """Replay STROKES.json stroke by stroke and print the top-K photos after each stroke.

    STROKES.json: {"strokes": [[[x, y], ...], ...], "frame": [w, h]} or the QMUL
    {"points": [[x, y, pen_up], ...]} or QuickDraw {"drawing": [[[x...], [y...]], ...]} form.
    """
    from .bundle import Bundle
    from .gallery import Gallery
    from .session import Retriever
    from .strokes import load_strokes_file

    with fail_cleanly():
        sketch = load_strokes_file(strokes)
        b = Bundle.load(bundle)
        g = Gallery.load(_gallery_path(bundle, gallery), b)
        target_idx = None
        if target is not None:
            if target not in g.ids:
                raise click.BadParameter(f"{target!r} is not an id of the gallery", param_hint="--target")
            target_idx = g.ids.index(target)
        r = Retriever(b, g, backend=backend, precision=precision, topk=topk, threads=threads)
        if b.demo:
            click.echo(DEMO_WARNING, err=True)
        click.echo(f"backend {r.backend.name}, precision {precision}, {len(g)} photos, {len(sketch)} strokes", err=True)
        session = r.session()
        for stroke in sketch:
            res = session.add_stroke(stroke)
            rank = None
            if target_idx is not None:
                s = g.scores(res.embedding)
                rank = int(np.sum(s >= s[target_idx]))  # ties count against the target, as the reference's <=
            if as_json:
                doc = res.to_dict()
                if rank is not None:
                    doc["target_rank"] = rank
                click.echo(json.dumps(doc))
                continue
            t = res.timings
            split = "  ".join(f"{k} {t[k]:.1f}" for k in ("rasterise", "preprocess", "encode", "head", "search"))
            extra = f"  target rank {rank}/{len(g)}" if rank is not None else ""
            click.echo(f"stroke {res.stroke:3d}/{len(sketch)}  [{split}  = {t['total']:.1f} ms]{extra}")
            for i, (pid, score) in enumerate(zip(res.ids, res.scores), 1):
                mark = " <- target" if pid == target else ""
                click.echo(f"    {i:2d}. {score:+.4f}  {pid}{mark}")


@main.command()
@click.argument("photos", type=click.Path(path_type=Path))
@_bundle_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--backend", default="auto", show_default=True, help=_BACKEND_HELP)
@click.option("--threads", type=int, default=None)
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--fp16-storage", is_flag=True, help="Store embeddings as float16 (half the memory).")
@click.option("--force", is_flag=True, help="Replace an existing gallery.")
@click.option("--json", "as_json", is_flag=True, help="Print the gallery metadata as JSON.")
def index(photos: Path, bundle: Path, out: Path | None, batch_size: int, backend: str, threads: int | None,
          strict: bool, fp16_storage: bool, force: bool, as_json: bool) -> None:
    """Embed every image under PHOTOS (recursively) into a gallery for `query`."""
    from .backends import get_backend
    from .bundle import Bundle
    from .gallery import build_gallery

    with fail_cleanly():
        b = Bundle.load(bundle)
        out = _gallery_path(bundle, out)
        g = build_gallery(
            photos, b, out, backend=get_backend(backend, threads=threads), batch_size=batch_size,
            strict=strict, float16=fp16_storage, force=force, progress=not as_json,
            warn=lambda m: click.echo(f"warning: {m}", err=True),
        )
    if as_json:
        click.echo(json.dumps({"path": str(out), **g.meta}, indent=2))
    else:
        skipped = len(g.meta["skipped"])
        click.echo(f"gallery written: {out} ({len(g)} photos, dim {g.dim}, {skipped} skipped)")


@main.command()
@_bundle_option
@click.option("--json", "as_json", is_flag=True)
def info(bundle: Path, as_json: bool) -> None:
    """Describe a bundle and the backends available on this machine."""
    from .backends import available_backends
    from .bundle import Bundle

    with fail_cleanly():
        b = Bundle.load(bundle)
        doc = {**b.describe(), "parity": b.manifest.get("parity", {}), "backends_available": available_backends()}
        doc["fidelity"] = b.manifest.get("fidelity", {})  # reduced precisions vs fp32 (dcssa-export calibrate)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"bundle {doc['path']}  phase {doc['phase']}  demo {doc['demo']}  created {doc['created']}")
    click.echo(f"dims {doc['dims']}")
    for name, precisions in doc["graphs"].items():
        click.echo(f"  {name:18s} {', '.join(precisions)}")
    for name, rep in doc["parity"].items():
        click.echo(f"  parity {name:18s} max abs err {rep['max_abs_err']:.2e}")
    for prec, rep in doc["fidelity"].items():
        lat = f", encoder {rep['latency']['ratio']:.2f}x fp32" if rep.get("latency") else ""
        click.echo(f"  fidelity {prec:16s} top-1 {rep['top1_agreement']:.1%}  top-10 {rep['top10_overlap']:.1%}  "
                   f"cosine {rep['embedding_cosine']['mean']:.4f}{lat}")
    click.echo(f"backends available: {', '.join(doc['backends_available'])}")


@main.command("make-dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", default="Shapes", show_default=True, help="Dataset name DS (folder OUT/DS).")
@click.option("--photos", "n_photos", type=click.IntRange(1), default=40, show_default=True)
@click.option("--sketches-per-photo", type=click.IntRange(1), default=1, show_default=True)
@click.option("--test-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of photos whose sketches go to the test split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True)
def make_dataset(out: Path, name: str, n_photos: int, sketches_per_photo: int, test_share: float, seed: int, force: bool) -> None:
    """Write a SYNTHETIC dataset in the authors' QMUL layout (for tests and demos).

    Photos are line drawings of random outlined shapes; sketches are jittered tracings of them, with
    strokes in random order. It is synthetic: numbers on it say nothing about real catalogues.
    Also writes each tracing as strokes JSON under OUT/DS/strokes/ for `dcssa-rt query`.
    """
    from .dataset import write_dataset

    with fail_cleanly():
        root = write_dataset(out, name=name, photos=n_photos, sketches_per_photo=sketches_per_photo,
                             test_share=test_share, seed=seed, force=force)
    click.echo(f"synthetic dataset written: {root}")


@main.command()
@_bundle_option
@click.option("--gallery", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--strokes", "strokes_file", type=click.Path(path_type=Path), default=None,
              help="Strokes JSON to replay [default: a generated 20-stroke sketch].")
@click.option("--max-strokes", type=click.IntRange(1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@click.option("--backend", "backends", multiple=True, help="Backends to measure [default: all available].")
@click.option("--precision", "precisions", multiple=True, help="Precisions [default: all in the bundle].")
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="The checkpoint the bundle was exported from, for the PyTorch baselines (needs [export]) "
                   "[default: the file the manifest names, if it lies beside the bundle with the recorded sha256].")
@click.option("--threads", type=int, default=None)
@click.option("--search-sizes", default="1000,10000,100000,1000000", show_default=True,
              help="Gallery sizes for the search-scaling section ('' to skip).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print bench.json on stdout (progress stays on stderr).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr.")
def bench(bundle: Path, gallery: Path | None, out: Path, strokes_file: Path | None, max_strokes: int, repeats: int,
          backends: tuple[str, ...], precisions: tuple[str, ...], ckpt: Path | None, threads: int | None,
          search_sizes: str, force: bool, as_json: bool, quiet: bool) -> None:
    """Measure per-stroke latency (naive, torch-eager, runtime), phases, undo, cold start, memory and
    search scaling; writes OUT/bench.json, bench.md, latency_per_stroke.png, search_scaling.png."""
    from dcssa.benchmarks.run import run_bench

    sizes = tuple(int(x) for x in search_sizes.split(",") if x.strip())
    say = (lambda m: None) if quiet else (lambda m: click.echo(f"bench: {m}", err=True))
    with fail_cleanly():
        rep = run_bench(bundle, _gallery_path(bundle, gallery), out, strokes_file=strokes_file, strokes=max_strokes,
                        repeats=repeats, backends=list(backends) or None, precisions=list(precisions) or None,
                        ckpt=ckpt, threads=threads, search_sizes=sizes, force=force, say=say)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo((out / "bench.md").read_text())


main.add_command(__import__("dcssa.runtime.evaluation.cli", fromlist=["eval_command"]).eval_command)  # light: click only
main.add_command(__import__("dcssa.runtime.serve.cli", fromlist=["serve"]).serve)  # light: click only


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
