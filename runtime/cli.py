"""``dcssa-rt``: query, index and inspect bundles from the command line.

Every subcommand is a standalone ``click.command`` (``eval`` and ``serve`` live beside their code)
registered in :data:`COMMANDS`; options come from :mod:`.cli_options`. Heavy modules are imported
when a command runs, so ``dcssa-rt --help`` needs neither FastAPI nor matplotlib.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .cli_options import bundle_option, default_gallery, gallery_option, output_options, runtime_options
from .cli_util import DEMO_WARNING, fail_cleanly, warn
from .evaluation.cli import calibrate_confidence_command, eval_command
from .progress import Progress
from .serve.cli import serve

STAGES = ("rasterise", "preprocess", "encode", "head", "search")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dcssa-rt")
def main() -> None:
    """Serve exported DC-SSA bundles: per-stroke sketch retrieval over a photo catalogue."""


def _print_result(res, sketch_len: int, rank: int | None, gallery_len: int, target: str | None) -> None:
    t = res.timings
    split = "  ".join(f"{k} {t[k]:.1f}" for k in STAGES)
    extra = f"  target rank {rank}/{gallery_len}" if rank is not None else ""
    if res.confidence is not None:
        extra += f"  P(top1) {res.confidence['top1']:.2f}  P(top10) {res.confidence['top10']:.2f}"
    click.echo(f"stroke {res.stroke:3d}/{sketch_len}  [{split}  = {t['total']:.1f} ms]{extra}")
    for i, (pid, score) in enumerate(zip(res.ids, res.scores), 1):
        mark = " <- target" if pid == target else ""
        click.echo(f"    {i:2d}. {score:+.4f}  {pid}{mark}")


def _target_index(gallery, target: str | None) -> int | None:
    if target is None:
        return None
    if target not in gallery.ids:
        raise click.BadParameter(f"{target!r} is not an id of the gallery", param_hint="--target")
    return gallery.ids.index(target)


@click.command()
@click.argument("strokes", type=click.Path(path_type=Path))
@bundle_option()
@gallery_option
@click.option("--topk", type=click.IntRange(1), default=10, show_default=True)
@runtime_options()
@click.option("--target", default=None, help="A gallery id to follow: prints its rank after every stroke.")
@output_options(json="one object per stroke")
def query(strokes: Path, bundle: Path, gallery: Path, topk: int, backend: str, precision: str,
          threads: int | None, target: str | None, as_json: bool, quiet: bool) -> None:
    """Replay STROKES.json stroke by stroke and print the top-K photos after each stroke.

    STROKES.json: {"strokes": [[[x, y], ...], ...], "frame": [w, h]} or the QMUL
    {"points": [[x, y, pen_up], ...]} or QuickDraw {"drawing": [[[x...], [y...]], ...]} form.
    """
    import numpy as np

    from .bundle import Bundle
    from .gallery import Gallery
    from .session import Retriever
    from .strokes import load_strokes_file

    say = Progress(quiet or as_json)
    with fail_cleanly():
        b = Bundle.load(bundle)
        sketch = load_strokes_file(strokes)
        g = Gallery.load(gallery, b)
        target_idx = _target_index(g, target)
        r = Retriever(b, g, backend=backend, precision=precision, topk=topk, threads=threads)
        if b.demo:
            click.echo(DEMO_WARNING, err=True)
        say(f"backend {r.backend.name}, precision {precision}, {len(g)} photos, {len(sketch)} strokes")
        session = r.session()
        for stroke in sketch:
            res = session.add_stroke(stroke)
            rank = None
            if target_idx is not None:
                s = g.scores(res.embedding)
                rank = int(np.sum(s >= s[target_idx]))  # ties count against the target, as the reference's <=
            if as_json:
                click.echo(json.dumps({**res.to_dict(), **({} if rank is None else {"target_rank": rank})}))
            else:
                _print_result(res, len(sketch), rank, len(g), target)


@click.command()
@click.argument("photos", type=click.Path(path_type=Path))
@bundle_option()
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Gallery folder [default: BUNDLE/gallery].")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True)
@runtime_options(precision=False)
@click.option("--strict", is_flag=True, help="Fail on an unreadable image instead of skipping it.")
@click.option("--fp16-storage", is_flag=True, help="Store embeddings as float16 (half the memory).")
@click.option("--index", "index_type", default=None, metavar="TYPE",
              help="exact (numpy, the default), flat, hnsw, ivf, ivfpq, or a FAISS index_factory string "
                   "(needs the [faiss] extra). Recall@10 against the exact search is measured and recorded.")
@click.option("--nlist", type=int, default=None, help="IVF cells [default: about 4 sqrt(N)].")
@click.option("--m", "m", type=int, default=None, help="hnsw: links per node [32]; ivfpq: PQ sub-quantizers [dim/4].")
@click.option("--nprobe", type=int, default=None, help="IVF cells searched [default: tuned to --target-recall].")
@click.option("--ef", type=int, default=None, help="HNSW efSearch [default: tuned to --target-recall].")
@click.option("--target-recall", type=float, default=0.95, show_default=True,
              help="Recall@10 the tuned search parameter must reach on held-out queries.")
@click.option("--shards", type=click.IntRange(1), default=1, show_default=True,
              help="Write the FAISS index in this many parts (loaded together as IndexShards).")
@click.option("--append", is_flag=True,
              help="Update the gallery at --out: embed only new files, drop removed ones, keep every other id.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Embed on Ray (needs the [ray] extra): a local instance, or ADDRESS (auto, ray://host:10001).")
@click.option("--ray-actors", type=click.IntRange(1), default=None,
              help="Photo-encoder actors on Ray [default: one per CPU of the cluster].")
@output_options(json="the gallery metadata", force="gallery")
def index(photos: Path, bundle: Path, out: Path | None, batch_size: int, backend: str, threads: int | None,
          strict: bool, fp16_storage: bool, index_type: str | None, nlist: int | None, m: int | None,
          nprobe: int | None, ef: int | None, target_recall: float, shards: int, append: bool,
          ray_address: str | None, ray_actors: int | None, as_json: bool, quiet: bool, force: bool) -> None:
    """Embed every image under PHOTOS (recursively) into a gallery for `query`, optionally with a FAISS index."""
    from .backends import get_backend
    from .bundle import Bundle
    from .gallery import build_gallery

    out = out if out is not None else default_gallery(bundle)
    say = Progress(quiet or as_json)
    with fail_cleanly():
        spec = None
        knobs = {"nlist": nlist, "m": m, "nprobe": nprobe, "ef": ef}
        if index_type is not None:
            from .faiss_index import IndexSpec

            spec = IndexSpec.parse(index_type, target_recall=target_recall, **knobs)
            if spec.kind != "exact":
                from .faiss_index import faiss_module

                faiss_module()  # a missing FAISS is reported before minutes of embedding
        elif any(v is not None for v in knobs.values()) or shards > 1:
            raise click.UsageError("--nlist/--m/--nprobe/--ef/--shards need --index")
        if append and force:
            raise click.UsageError("--append updates the gallery in place; --force would rebuild it: pick one")
        b = Bundle.load(bundle)
        embedder = None
        if ray_address is not None:
            from .ray_index import default_shard_folder, ray_embedder

            embedder = ray_embedder(b, address=ray_address, actors=ray_actors, batch_size=batch_size,
                                    strict=strict, threads=threads, backend=backend, shards=default_shard_folder(out), say=say)
        g = build_gallery(
            photos, b, out, backend=get_backend(backend, threads=threads), batch_size=batch_size,
            strict=strict, float16=fp16_storage, force=force, progress=not (quiet or as_json), warn=warn,
            index=spec, shards=shards, append=append, embedder=embedder, say=say,
        )
    ix = g.meta.get("index")
    if ix and ix["recall_at_10"] < ix["target_recall"]:
        warn(f"the {ix['type']} index reaches recall@10 {ix['recall_at_10']:.4f} only (target {ix['target_recall']}): "
             "its results will differ from the exact search; use more IVF cells probed / PQ bytes (--nprobe, --m), "
             "or --index hnsw / flat")
    if as_json:
        click.echo(json.dumps({"path": str(out), **g.meta}, indent=2))
    else:
        skipped = len(g.meta["skipped"])
        click.echo(f"gallery written: {out} ({len(g)} photos, dim {g.dim}, {skipped} skipped)")
        if g.meta.get("index"):
            click.echo(f"  {_index_line(g.meta['index'])}")


def _index_line(ix: dict) -> str:
    params = ", ".join(f"{k} {v}" for k, v in ix.get("search_params", {}).items())
    shards = f", {ix['shards']} shards" if ix.get("shards", 1) > 1 else ""
    return (f"index {ix['type']} ({ix['factory']}{shards}): recall@10 {ix['recall_at_10']:.4f} vs exact search "
            f"on {ix['recall_queries']} held-out queries{' at ' + params if params else ''}; "
            f"{ix['bytes'] / 2**20:.1f} MiB, built in {ix['build_s']:.1f} s")


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
        click.echo(f"  {_index_line(g['index'])}" if g.get("index") else "  search exact (numpy)")
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
    from .backends import available_backends
    from .bundle import Bundle
    from .gallery import GALLERY_META
    from .errors import GalleryError
    from .confidence import describe as describe_confidence

    with fail_cleanly():
        b = Bundle.load(bundle)
        doc = {**b.describe(), "parity": b.manifest.get("parity", {}), "backends_available": available_backends()}
        doc["fidelity"] = b.manifest.get("fidelity", {})  # reduced precisions vs fp32 (dcssa-export calibrate)
        from . import manifest as mf

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
        doc["confidence"] = describe_confidence(b, where)  # per-stroke confidence: fitted or not (and why)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        _print_info(doc)


@click.command("make-dataset")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--name", default="Shapes", show_default=True, help="Dataset name DS (folder OUT/DS).")
@click.option("--photos", "n_photos", type=click.IntRange(1), default=40, show_default=True)
@click.option("--sketches-per-photo", type=click.IntRange(1), default=1, show_default=True)
@click.option("--test-share", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of photos whose sketches go to the test split.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "layout", type=click.Choice(["qmul", "arnet"]), default="qmul", show_default=True,
              help="qmul: DS_Coordinate + photo/ (DC-SSA); arnet: trainA/trainB/testA/testB with sketch PNGs "
                   "(plus the strokes).")
@output_options(json="the dataset folder", quiet=False, force="dataset folder")
def make_dataset(out: Path, name: str, n_photos: int, sketches_per_photo: int, test_share: float, seed: int,
                 layout: str, as_json: bool, force: bool) -> None:
    """Write a SYNTHETIC dataset in the authors' QMUL layout (for tests and demos).

    Photos are line drawings of random outlined shapes; sketches are jittered tracings of them, with
    strokes in random order. It is synthetic: numbers on it say nothing about real catalogues.
    Also writes each tracing as strokes JSON under OUT/DS/strokes/ for `dcssa-rt query`.
    """
    from .dataset import write_arnet_dataset, write_dataset

    write = write_arnet_dataset if layout == "arnet" else write_dataset
    with fail_cleanly():
        root = write(out, name=name, photos=n_photos, sketches_per_photo=sketches_per_photo,
                     test_share=test_share, seed=seed, force=force)
    click.echo(json.dumps({"path": str(root)}) if as_json else f"synthetic dataset written: {root}")


#: ``dcssa-rt bench --peers`` (benchmarks/stroke_latency.PEERS; not imported here: it loads the runtime)
BENCH_PEERS = ("eager", "channels-last", "bf16", "compile")


def _peer_list(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(p.strip() for p in value.split(",") if p.strip()))
    wrong = [p for p in names if p not in BENCH_PEERS]
    if wrong:
        raise click.BadParameter(f"{', '.join(wrong)}: choose from {', '.join(BENCH_PEERS)}")
    return names


@click.command()
@bundle_option()
@gallery_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-out"), show_default=True)
@click.option("--strokes", "strokes_file", type=click.Path(path_type=Path), default=None,
              help="Strokes JSON to replay [default: a generated 20-stroke sketch].")
@click.option("--max-strokes", type=click.IntRange(1), default=20, show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=5, show_default=True)
@runtime_options(multiple=True)
@click.option("--ckpt", type=click.Path(path_type=Path), default=None,
              help="The checkpoint the bundle was exported from, for the PyTorch baselines (needs [export]) "
                   "[default: the file the manifest names, if it lies beside the bundle with the recorded sha256].")
@click.option("--search-sizes", default="1000,10000,100000,1000000", show_default=True,
              help="Gallery sizes for the search-scaling section ('' to skip).")
@click.option("--index-sizes", default="", show_default=True,
              help="Sizes for the FAISS index section (flat, hnsw, ivf, ivfpq against exact; needs [faiss]; '' to skip).")
@click.option("--peers", default=",".join(BENCH_PEERS), show_default=True, callback=_peer_list,
              help="PyTorch peers to measure beside naive (methods torch-PEER), comma-separated; those the CPU "
                   "cannot run (bf16 without native bf16, compile without a C++ compiler) are left out with the "
                   "reason; '' for none.")
@output_options(json="bench.json", force="output folder")
def bench(bundle: Path, gallery: Path, out: Path, strokes_file: Path | None, max_strokes: int, repeats: int,
          backends: tuple[str, ...], precisions: tuple[str, ...], threads: int | None, ckpt: Path | None,
          search_sizes: str, index_sizes: str, peers: tuple[str, ...], as_json: bool, quiet: bool,
          force: bool) -> None:
    """Measure per-stroke latency (naive, the PyTorch peers, runtime), phases, undo, cold start, memory
    and search scaling; writes OUT/bench.json, bench.md, latency_per_stroke.png, search_scaling.png."""
    from dcssa.benchmarks.run import run_bench

    sizes = tuple(int(x) for x in search_sizes.split(",") if x.strip())
    isizes = tuple(int(x) for x in index_sizes.split(",") if x.strip())
    with fail_cleanly():
        rep = run_bench(bundle, gallery, out, strokes_file=strokes_file, strokes=max_strokes,
                        repeats=repeats, backends=list(backends) or None, precisions=list(precisions) or None,
                        ckpt=ckpt, threads=threads, search_sizes=sizes, index_sizes=isizes, peers=peers, force=force,
                        say=Progress(quiet or as_json))
    if as_json:
        click.echo(json.dumps(rep, indent=2))
    else:
        click.echo((out / "bench.md").read_text())


#: every ``dcssa-rt`` subcommand, registered the one way below
COMMANDS: tuple[click.Command, ...] = (query, index, info, make_dataset, bench, eval_command, calibrate_confidence_command,
                                       serve)
for _command in COMMANDS:
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
